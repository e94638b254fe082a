"""Analyzers borrow the user's model and give it back as it was: parameters, buffers, requires_grad
flags, .grad, training mode and hooks, also when the analysis raises."""
import copy

import pytest
import torch
from torch import nn

from xai import Gradient, InputTimesGradient, IntegratedGradients, SmoothGrad

ANALYZERS = {
    "Gradient": lambda m: Gradient(m),
    "InputTimesGradient": lambda m: InputTimesGradient(m),
    "SmoothGrad": lambda m: SmoothGrad(m, samples=3, seed=0, batch_size=4),
    "IntegratedGradients": lambda m: IntegratedGradients(m, steps=3, batch_size=4),
}


@pytest.fixture(params=list(ANALYZERS))
def make(request):
    return ANALYZERS[request.param]


def snapshot(model: nn.Module) -> dict:
    """Everything about a model an analyzer could disturb."""
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "training": [m.training for m in model.modules()],
        "hooks": [
            (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks), len(m._backward_pre_hooks))
            for m in model.modules()
        ],
    }


def assert_same(before: dict, after: dict) -> None:
    assert before["state"].keys() == after["state"].keys()
    for key in before["state"]:
        assert torch.equal(before["state"][key], after["state"][key]), f"{key} changed"
    assert before["requires_grad"] == after["requires_grad"]
    for a, b in zip(before["grads"], after["grads"]):
        assert (a is None and b is None) or torch.equal(a, b)
    assert before["training"] == after["training"]
    assert before["hooks"] == after["hooks"]


@pytest.fixture
def user_model(digits_model):
    """A copy in a state a user might leave it in: training mode, a frozen first layer, a .grad, and hooks."""
    model = copy.deepcopy(digits_model).train()
    model[0][0].weight.requires_grad_(False)
    model[1][4].weight.grad = torch.ones_like(model[1][4].weight)
    calls = []
    model[0][0].register_forward_hook(lambda module, args, output: calls.append("forward"))
    model[1][4].register_full_backward_hook(lambda module, grad_in, grad_out: calls.append("backward"))
    model.calls = calls
    return model


def test_model_is_unchanged_after_analysis(make, user_model, digits_batch):
    before = snapshot(user_model)
    make(user_model)(digits_batch[0])
    assert_same(before, snapshot(user_model))
    assert "forward" in user_model.calls  # the user's hooks stay registered and active during analysis


def test_analysis_runs_in_eval_mode_and_does_not_update_batchnorm(user_model, digits_batch):
    modes = []
    handle = user_model[0][1].register_forward_pre_hook(lambda module, args: modes.append(module.training))
    try:
        expl = Gradient(user_model)(digits_batch[0])
    finally:
        handle.remove()
    assert modes and not any(modes)
    with torch.no_grad():
        eval_output = copy.deepcopy(user_model).eval()(digits_batch[0])
    torch.testing.assert_close(expl.output, eval_output)  # Dropout off, running statistics used


def test_model_is_restored_after_an_exception(make, user_model, digits_batch):
    before = snapshot(user_model)
    with pytest.raises(ValueError, match="out of range"):
        make(user_model)(digits_batch[0], target=99)
    assert_same(before, snapshot(user_model))


class FailingAfter(nn.Module):
    """Wraps a model and raises on the n-th forward, i.e. in the middle of a gradient loop."""

    def __init__(self, model: nn.Module, fail_at: int):
        super().__init__()
        self.model, self.fail_at, self.calls = model, fail_at, 0

    def forward(self, x):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("boom")
        return self.model(x)


@pytest.mark.parametrize("name", ["SmoothGrad", "IntegratedGradients"])
def test_model_is_restored_after_an_exception_mid_loop(name, user_model, digits_batch):
    wrapped = FailingAfter(user_model, fail_at=3)
    before = snapshot(wrapped)
    with pytest.raises(RuntimeError, match="boom"):
        ANALYZERS[name](wrapped)(digits_batch[0])
    assert wrapped.calls == 3
    assert_same(before, snapshot(wrapped))


def test_hooks_added_by_someone_during_analysis_are_removed(digits_batch):
    """A model that registers a hook in its forward (as some libraries do) gets its hook dicts back."""

    class SelfHooking(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(32 * 32, 3)

        def forward(self, x):
            self.linear.register_forward_hook(lambda *args: None)
            return self.linear(x.flatten(1))

    model = SelfHooking()
    before = snapshot(model)
    Gradient(model)(digits_batch[0])
    assert_same(before, snapshot(model))


def test_parameters_need_not_require_grad_and_no_parameter_gradients_are_made(make, digits_model, digits_batch):
    model = copy.deepcopy(digits_model)
    expl = make(model)(digits_batch[0])
    assert all(p.grad is None for p in model.parameters())
    assert expl.attribution.abs().sum() > 0
    frozen = copy.deepcopy(digits_model).requires_grad_(False)
    torch.testing.assert_close(make(frozen)(digits_batch[0]).attribution, expl.attribution)
    assert not any(p.requires_grad for p in frozen.parameters())


def test_input_is_not_modified_and_stays_without_grad(make, digits_model, digits_batch):
    x = digits_batch[0].clone()
    expl = make(digits_model)(x)
    assert torch.equal(x, digits_batch[0]) and not x.requires_grad and x.grad is None
    assert expl.attribution.device == x.device and expl.target.device == x.device
