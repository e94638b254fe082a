"""LRP for Vision Transformers: the CPLRP and AttnLRP composites against LXT 2.1, by hand on single ops, and by
conservation; torchvision's ViT and Swin, timm's ViT and DeiT explained without refusal."""
import contextlib
import warnings

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import xai.composites as xc
from xai import LRP, Gradient
from xai.composites import AttnLRP, CPLRP
from xai.errors import UnsupportedModelError
from xai.rules import stabilize

TINY = 1e-12  # epsilon and stabilizer where a rule is compared with LXT's exact gradients


def tiny_vit() -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                                 hidden_dim=32, mlp_dim=64, num_classes=10).double().eval()
    with torch.no_grad():  # torchvision zero-initialises the head and the class token
        nn.init.normal_(model.heads.head.weight, std=0.5)
        nn.init.normal_(model.heads.head.bias, std=0.1)
        nn.init.normal_(model.class_token, std=0.5)
    return model


def tiny_swin() -> nn.Module:
    """swin_t's building blocks (ShiftedWindowAttention with shifted windows and their mask, PatchMerging)."""
    torch.manual_seed(0)
    return torchvision.models.SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 2],
                                              window_size=[4, 4], num_classes=10).double().eval()


def zero_offsets(model: nn.Module) -> nn.Module:
    """Biases, class tokens and position embeddings zeroed: what remains is linear in the input or a constant
    attention pattern, so relevance that is conserved layer by layer sums to the output relevance."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or any(part in name for part in ("class_token", "pos_embedding", "cls_token",
                                                                      "pos_embed")):
                param.zero_()
    return model


@contextlib.contextmanager
def lxt_patched(patch_map: dict):
    """LXT's monkey patches (classes patched globally) and LXT's patch of Zennit, undone afterwards."""
    import zennit.core
    from lxt.efficient import monkey_patch, monkey_patch_zennit
    from torchvision.models import vision_transformer

    classes = (nn.GELU, nn.LayerNorm, nn.MultiheadAttention, zennit.core.BasicHook)
    saved = [(cls, name, cls.__dict__.get(name)) for cls in classes for name in ("forward", "original_forward",
                                                                                   "backward")]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            monkey_patch(vision_transformer, patch_map)
            monkey_patch_zennit()
        yield
    finally:
        for cls, name, value in saved:
            if value is not None:
                setattr(cls, name, value)
            elif name in cls.__dict__:
                delattr(cls, name)


def lxt_relevance(model: nn.Module, x: torch.Tensor, target: int, gamma_linear: float, gamma_conv: float,
                  patch_map: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """LXT's ViT example: Zennit's Gamma on Conv2d and Linear, backward from the logit, relevance = x * grad."""
    import zennit.rules as zr
    from zennit.composites import LayerMapComposite

    with lxt_patched(patch_map):
        composite = LayerMapComposite([(nn.Conv2d, zr.Gamma(gamma_conv, stabilizer=TINY)),
                                       (nn.Linear, zr.Gamma(gamma_linear, stabilizer=TINY))])
        x = x.clone().requires_grad_(True)
        with composite.context(model) as modified:
            logit = modified(x)[:, target]
            logit.sum().backward()
    return (x * x.grad).detach(), logit.detach()


def lxt_attnlrp_attention(self, query, key, value, need_weights=False, **kwargs):
    """AttnLRP inside torchvision's self-attention from LXT's own rule (``wrap_attention_forward``: the uniform
    rule as divide_gradient on query, key (by 4) and value (by 2), the softmax by Gradient x Input), around the same
    projections as nn.MultiheadAttention (its weights used functionally)."""
    from lxt.efficient.patches import wrap_attention_forward

    batch, length, dim = query.shape
    heads = self.num_heads
    q, k, v = (t.reshape(batch, length, heads, dim // heads).transpose(1, 2)
               for t in F.linear(query, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1))
    attention = wrap_attention_forward(lambda module, q, k, v: F.scaled_dot_product_attention(q, k, v))
    output = attention(self, q, k, v).transpose(1, 2).reshape(batch, length, dim)
    return F.linear(output, self.out_proj.weight, self.out_proj.bias), None


def lxt_maps() -> dict:
    from lxt.efficient.models.vit_torch import cp_LRP
    from lxt.efficient.patches import patch_method

    attn_lrp = {cls: patch for cls, patch in cp_LRP.items() if cls is not nn.MultiheadAttention}
    attn_lrp[nn.MultiheadAttention] = lambda cls: patch_method(lxt_attnlrp_attention, cls)
    return {"CPLRP": cp_LRP, "AttnLRP": attn_lrp}


@pytest.mark.parametrize("composite", [CPLRP, AttnLRP])
@pytest.mark.parametrize("gamma_linear, gamma_conv", [(0.1, 0.25), (0.0, 0.25), (0.0, 0.0), (1.0, 100.0)])
def test_vit_equals_lxt(composite, gamma_linear, gamma_conv):
    model = tiny_vit()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    reference, logit = lxt_relevance(model, x, 3, gamma_linear, gamma_conv, lxt_maps()[composite.__name__])
    ours = LRP(model, composite=composite(gamma_linear=gamma_linear, gamma_conv=gamma_conv, epsilon=TINY,
                                          stabilizer=TINY))(x, target=3).attribution
    # LXT's output relevance is the logit, ours 1; every rule is linear in the output relevance
    ours = ours * logit.view(-1, 1, 1, 1)
    assert reference.abs().sum() > 0
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5 * reference.abs().max().item())
    assert nn.GELU.forward is nn.GELU.__dict__["forward"] and "original_forward" not in nn.GELU.__dict__


def test_the_default_stabilizers_stay_close_to_lxt():
    """With the defaults (epsilon = stabilizer = 1e-6, Zennit's Gamma default too) the rules are stabilised where
    LXT's gradients are exact: close, not equal."""
    model = tiny_vit()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    reference, logit = lxt_relevance(model, x, 3, 0.1, 0.25, lxt_maps()["CPLRP"])
    ours = LRP(model, composite=CPLRP(gamma_linear=0.1, gamma_conv=0.25))(x, target=3).attribution
    ours = ours * logit.view(-1, 1, 1, 1)
    assert ((ours - reference).norm() / reference.norm()) < 1e-2


def test_the_uniform_rule_on_a_matmul_by_hand():
    class MatmulOfTwo(nn.Module):
        def forward(self, x):
            a, b = x[:, :6].reshape(-1, 2, 3), x[:, 6:].reshape(-1, 3, 2)
            return (a @ b).flatten(1)

    torch.manual_seed(1)
    x = torch.randn(3, 12, dtype=torch.float64)
    epsilon = 0.01
    explanation = LRP(MatmulOfTwo(), composite=AttnLRP(epsilon=epsilon))(x, target=2)
    a, b = x[:, :6].reshape(-1, 2, 3), x[:, 6:].reshape(-1, 3, 2)
    z = a @ b
    s = torch.zeros_like(z)
    s.view(3, -1)[:, 2] = 1.0
    s = s / stabilize(z, epsilon)
    expected = torch.cat([(a * (s @ b.transpose(1, 2)) / 2).flatten(1),
                          (b * (a.transpose(1, 2) @ s) / 2).flatten(1)], 1)
    torch.testing.assert_close(explanation.attribution, expected, rtol=1e-12, atol=1e-12)
    # no bias: conserved up to the stabilizer
    torch.testing.assert_close(explanation.attribution.sum(1), (z / stabilize(z, epsilon)).flatten(1)[:, 2])


def test_the_softmax_rule_by_hand():
    torch.manual_seed(2)
    head = nn.Linear(5, 3, bias=False).double()

    class SoftmaxInside(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = head

        def forward(self, x):
            return self.head(F.softmax(x, dim=1))

    x = torch.randn(4, 5, dtype=torch.float64)
    epsilon = 1e-3
    explanation = LRP(SoftmaxInside(), composite=AttnLRP(gamma_linear=0.0, epsilon=epsilon))(x, target=1)
    s = F.softmax(x, dim=1)
    z = s @ head.weight.T
    relevance_s = s * (head.weight[1] / stabilize(z[:, 1:2], epsilon))  # Epsilon rule of the head, output 1
    expected = x * (relevance_s - s * relevance_s.sum(1, keepdim=True))  # R_in = x (R - s sum(R))
    torch.testing.assert_close(explanation.attribution, expected, rtol=1e-12, atol=1e-12)


def test_cplrp_passes_relevance_through_the_values_only():
    """With constant attention weights the block is linear in the values: the Epsilon rule of that map."""
    torch.manual_seed(3)
    attention = nn.MultiheadAttention(4, 2, batch_first=True, bias=False).double().eval()

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attention = attention

        def forward(self, x):
            x = x.reshape(-1, 3, 4)
            return self.attention(x, x, x, need_weights=False)[0].flatten(1)

    x = torch.randn(2, 12, dtype=torch.float64)
    explanation = LRP(Block(), composite=CPLRP(epsilon=TINY))(x, target=5)
    leaf = x.clone().requires_grad_(True)
    sequence = leaf.reshape(-1, 3, 4)
    constant = sequence.detach()
    output = attention(constant, constant, sequence, need_weights=False)[0].flatten(1)
    (gradient,) = torch.autograd.grad(output[:, 5].sum(), leaf)
    expected = x * gradient / output[:, 5:6].detach()  # x J^T (R / z), R one-hot at output 5
    torch.testing.assert_close(explanation.attribution, expected, rtol=1e-7, atol=1e-10)
    torch.testing.assert_close(explanation.attribution.sum(1), torch.ones(2, dtype=torch.float64))


@pytest.mark.parametrize("batch_first, need_weights, masks", [
    (True, False, None), (False, True, None), (True, True, "bool"), (False, False, "float"), (True, False, "padding"),
])
def test_multi_head_attention_is_decomposed_exactly(batch_first, need_weights, masks):
    """The decomposition computes what nn.MultiheadAttention computes (cross-attention, masks, weights)."""
    torch.manual_seed(4)
    attention = nn.MultiheadAttention(6, 3, batch_first=batch_first).double().eval()
    query, memory = torch.randn(2, 4, 6, dtype=torch.float64), torch.randn(2, 5, 6, dtype=torch.float64)
    if not batch_first:
        query, memory = query.transpose(0, 1), memory.transpose(0, 1)
    kwargs = {"need_weights": need_weights}
    if masks == "bool":
        kwargs["attn_mask"] = torch.rand(4, 5) > 0.7
        kwargs["attn_mask"][:, 0] = False
    elif masks == "float":
        kwargs["attn_mask"] = torch.randn(4, 5, dtype=torch.float64)
    elif masks == "padding":
        kwargs["key_padding_mask"] = torch.tensor([[False] * 5, [False, False, False, True, True]])
    from xai.lrp.attention import multi_head_attention_forward

    with torch.no_grad():
        expected = attention(query, memory, memory, **kwargs)
        F_mha = F.multi_head_attention_forward
        try:
            F.multi_head_attention_forward = multi_head_attention_forward
            ours = attention(query, memory, memory, **kwargs)
        finally:
            F.multi_head_attention_forward = F_mha
    torch.testing.assert_close(ours[0], expected[0])
    if need_weights:
        torch.testing.assert_close(ours[1], expected[1])


@pytest.mark.parametrize("composite", [CPLRP, AttnLRP])
def test_scaled_dot_product_attention_is_decomposed_exactly(composite):
    from xai.lrp.attention import scaled_dot_product_attention

    torch.manual_seed(5)
    q, k, v = (torch.randn(2, 3, 4, 8, dtype=torch.float64) for _ in range(3))
    mask = torch.rand(4, 4) > 0.5
    mask[:, 0] = True
    for kwargs in ({}, {"is_causal": True}, {"attn_mask": mask}, {"attn_mask": torch.randn(4, 4).double()},
                   {"scale": 0.3}):
        torch.testing.assert_close(scaled_dot_product_attention(q, k, v, **kwargs),
                                   F.scaled_dot_product_attention(q, k, v, **kwargs))


def test_cplrp_conserves_relevance_on_a_vit():
    model = zero_offsets(tiny_vit())
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    explanation = LRP(model, composite=CPLRP(gamma_linear=0.1, gamma_conv=0.25, epsilon=TINY,
                                             stabilizer=TINY))(x, target=2)
    torch.testing.assert_close(explanation.attribution.sum((1, 2, 3)), torch.ones(3, dtype=torch.float64),
                               rtol=0, atol=1e-4)


def test_the_model_is_unchanged_after_analysis_and_after_an_error():
    model = tiny_vit()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    plain = model(x)
    for composite in (CPLRP(), AttnLRP()):
        LRP(model, composite=composite)(x, target=1)
        with pytest.raises((ValueError, IndexError)):
            LRP(model, composite=composite)(x, target=99)
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]) and param.requires_grad == flags[name], name
    assert torch._C._len_torch_function_stack() == 0
    torch.testing.assert_close(model(x), plain, rtol=0, atol=0)
    assert "original_forward" not in nn.MultiheadAttention.__dict__


@pytest.mark.parametrize("composite", [CPLRP, AttnLRP])
def test_an_lrp_pass_leaves_no_reference_cycles(composite):
    """Everything a pass keeps is freed with its graph, not when the garbage collector next runs: a cycle (a
    recursive closure, a rule that keeps a tensor it reads back) would hold activations past the backward pass."""
    import gc

    analyzer = LRP(tiny_vit(), composite=composite())
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    analyzer(x, 1)  # the model check and the cached weights: once per analyzer
    gc.collect()
    before = {id(o) for o in gc.get_objects() if isinstance(o, torch.Tensor)}  # earlier tests' tensors aside
    gc.set_debug(gc.DEBUG_SAVEALL)  # what the collector frees stays in gc.garbage, to be looked at
    try:
        analyzer(x, 1)
        gc.collect()
        held = [tuple(o.shape) for o in gc.garbage if isinstance(o, torch.Tensor) and id(o) not in before]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert not held, f"tensors freed only by the garbage collector: {held}"


def test_in_place_activations_give_the_same_relevance_and_stay_in_place():
    """The rules remake an activation's output from its input in the backward pass, after the LRP forward pass has
    restored ``inplace=True``: the remake must still leave its input alone."""
    def make(inplace: bool) -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(6, 8), nn.SiLU(inplace=inplace), nn.Linear(8, 8), nn.GELU(),
                             nn.LayerNorm(8), nn.Linear(8, 3)).double().eval()

    x = torch.randn(4, 6, dtype=torch.float64)
    in_place = make(True)
    expected = LRP(make(False), composite=CPLRP())(x, 2).attribution
    torch.testing.assert_close(LRP(in_place, composite=CPLRP())(x, 2).attribution, expected, rtol=0, atol=0)
    assert in_place[1].inplace is True


MODELS = {
    "torchvision_vit": (tiny_vit, 32),
    "torchvision_swin": (tiny_swin, 32),
    "timm_vit_tiny": (lambda: timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32,
                                                num_classes=10), 32),
    "timm_deit_tiny": (lambda: timm.create_model("deit_tiny_patch16_224", pretrained=False, img_size=32,
                                                 num_classes=10), 32),
    "timm_vit_swiglu": (lambda: timm.models.VisionTransformer(  # gated MLPs: silu(x W_g) * (x W_u)
        img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=10, mlp_layer=timm.layers.SwiGLU,
        act_layer=nn.SiLU), 32),
}


@pytest.mark.parametrize("composite", [CPLRP, AttnLRP])
@pytest.mark.parametrize("name", MODELS)
def test_vision_transformers_are_explained(name, composite):
    """No refusal, finite attributions; CPLRP conserves the relevance (biases, tokens and position embeddings zeroed,
    tiny epsilon) within 1e-4; AttnLRP's softmax rule does not conserve (Achtibat et al. 2024), so its sum is only
    checked to be finite and non-zero. A gradient afterwards is the plain gradient."""
    make, size = MODELS[name]
    torch.manual_seed(6)
    model = zero_offsets(make().double().eval())
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    explanation = LRP(model, composite=composite(epsilon=TINY, stabilizer=TINY))(x, target=4)
    assert explanation.attribution.shape == x.shape
    assert torch.isfinite(explanation.attribution).all()
    assert (explanation.attribution.abs().sum((1, 2, 3)) > 0).all()
    if composite is CPLRP:
        torch.testing.assert_close(explanation.attribution.sum((1, 2, 3)), torch.ones(2, dtype=torch.float64),
                                   rtol=0, atol=1e-4)
    leaf = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(model(leaf)[:, 4].sum(), leaf)
    torch.testing.assert_close(Gradient(model)(x, target=4).attribution, expected)


def test_swin_t_runs_with_both_composites():
    model = torchvision.models.swin_t(weights=None).eval()
    x = torch.randn(1, 3, 64, 64)
    for composite in (CPLRP(), AttnLRP()):
        attribution = LRP(model, composite=composite)(x, target=0).attribution
        assert torch.isfinite(attribution).all() and attribution.abs().sum() > 0


@pytest.mark.parametrize("make, expected", [
    (tiny_vit, ["MultiheadAttention x2 (encoder.layers.encoder_layer_0.self_attention", "attention: use an "
                "attention composite", "CPLRP"]),
    (tiny_swin, ["ShiftedWindowAttention x4 (features.1.0.attn", "calls linear on an activation", "calls matmul",
                 "functional softmax inside the model", "CPLRP"]),
    (lambda: timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32),
     ["Attention x12 (blocks.0.attn", "calls scaled_dot_product_attention", "AttnLRP"]),
])
def test_composites_without_attention_rules_still_refuse_transformers(make, expected):
    with pytest.raises(UnsupportedModelError) as info:
        LRP(make().eval(), composite=xc.EpsilonPlus())(torch.randn(1, 3, 32, 32).to(next(make().parameters())))
    for text in expected:
        assert text in str(info.value)


def test_what_the_attention_rules_do_not_cover_is_still_refused():
    class ZeroAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.attention = nn.MultiheadAttention(4, 2, batch_first=True, add_zero_attn=True)
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.attention(x[:, None], x[:, None], x[:, None])[0][:, 0])

    with pytest.raises(UnsupportedModelError, match=r"attention \(MultiheadAttention\): calls "
                                                    r"multi_head_attention_forward: add_zero_attn=True"):
        LRP(ZeroAttention(), composite=AttnLRP())(torch.randn(2, 4))
    layer = nn.TransformerEncoderLayer(4, 2, dim_feedforward=8, batch_first=True)
    with pytest.raises(UnsupportedModelError, match=r"\(TransformerEncoderLayer\): transformer layer"):
        LRP(nn.Sequential(layer, nn.Flatten(), nn.Linear(4, 2)), composite=CPLRP())(torch.randn(2, 1, 4))
    class SoftmaxAtTheOutput(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(4, 3)

        def forward(self, x):
            return torch.softmax(self.body(x), dim=1)

    with pytest.raises(UnsupportedModelError, match="functional softmax at the output"):
        LRP(SoftmaxAtTheOutput(), composite=AttnLRP())(torch.randn(2, 4))


class GatedMLPNet(nn.Module):
    """A classifier around a gated MLP with the attribute names of LXT's patched ``LlamaMLP``."""

    def __init__(self, mlp_forward=None):
        super().__init__()
        self.gate_proj, self.up_proj, self.down_proj = nn.Linear(6, 8), nn.Linear(6, 8), nn.Linear(8, 6)
        self.act_fn, self.head = nn.SiLU(), nn.Linear(6, 3)
        self.mlp_forward = mlp_forward

    def forward(self, x):
        if self.mlp_forward is not None:  # LXT's patched forward, called with this module as its ``self``
            return self.head(self.mlp_forward(self, x))
        return self.head(self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x)))


@pytest.mark.parametrize("composite, lxt_forward", [(CPLRP, "cp_gated_mlp_forward"), (AttnLRP, "gated_mlp_forward")])
def test_gated_mlp_equals_lxt(composite, lxt_forward):
    """CPLRP: the gate silu(x W_g) a constant (LXT 2.1's ``cp_gated_mlp_forward``); AttnLRP: the identity rule on the
    SiLU and the uniform rule on the product (``gated_mlp_forward``). LXT's relevance is x * grad from the logit,
    which through Linear layers is LRP-0: ours with a tiny epsilon, times the logit. Float64, 1e-5 relative."""
    from lxt.efficient import patches

    torch.manual_seed(2)
    model = GatedMLPNet().double()
    x = torch.randn(4, 6, dtype=torch.float64)
    reference_model = GatedMLPNet(getattr(patches, lxt_forward)).double()
    reference_model.load_state_dict(model.state_dict())
    leaf = x.clone().requires_grad_(True)
    logit = reference_model(leaf)[:, 1]
    (grad,) = torch.autograd.grad(logit.sum(), leaf)
    reference = (leaf * grad).detach()
    ours = LRP(model, composite=composite(epsilon=TINY, stabilizer=TINY))(x, target=1).attribution
    assert reference.abs().sum() > 0
    torch.testing.assert_close(ours * logit.detach()[:, None], reference, rtol=1e-5, atol=1e-5 * reference.abs().max())
    with torch.no_grad():  # bias-free, both rules conserve the relevance
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.zero_()
    sums = LRP(model, composite=composite(epsilon=TINY, stabilizer=TINY))(x, target=1).attribution.sum(1)
    torch.testing.assert_close(sums, torch.ones(4, dtype=torch.float64), rtol=0, atol=1e-6)


def test_products_the_composite_cannot_split_are_refused_naming_why():
    class Bilinear(nn.Module):  # neither factor an activation function's output: CP-LRP cannot tell the gate
        def __init__(self):
            super().__init__()
            self.a, self.b, self.head = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.a(x) * self.b(x))

    x = torch.randn(2, 4)
    with pytest.raises(UnsupportedModelError, match=r"GateRule takes the factor that is an activation function's "
                                                    r"output as the gate, and here neither or both are"):
        LRP(Bilinear(), composite=CPLRP())(x)
    assert torch.isfinite(LRP(Bilinear(), composite=AttnLRP())(x).attribution).all()
    with pytest.raises(UnsupportedModelError, match=r"GatedMLPNet\): multiplies two activations \(mul\).*CPLRP and "
                                                    r"AttnLRP have one for gated MLPs"):
        LRP(GatedMLPNet(), composite=xc.EpsilonPlus())(torch.randn(2, 6))
