"""Class activation maps: a layer's feature maps A_k weighted per channel, rectified and upsampled to the input.

cam = relu(sum_k w_k A_k) at the layer's resolution, then bilinear upsampling to the input's H x W (as
pytorch-grad-cam, whose cv2 resize takes the same half-pixel centres as ``align_corners=False``). A method is its
channel weights (or, for LayerCAM, its weighted maps); the formulas are pytorch-grad-cam's (package ``grad-cam``):

- ``GradCAM`` (Selvaraju et al. 2017): w_k = the spatial mean of d y_t / d A_k.
- ``GradCAMPlusPlus`` (Chattopadhyay et al. 2018, eq. 19): w_k = sum_ij relu(g_ij) a_ij with
  a_ij = g^2 / (2 g^2 + sum_ij(A_k) g^3 + 1e-6), 0 where g = 0 (g = d y_t / d A_k).
- ``LayerCAM`` (Jiang et al. 2021): cam = relu(sum_k relu(g_k) * A_k), a weight per position.
- ``ScoreCAM`` (Wang et al. 2020): w = softmax_k(y_t(x * m_k)), m_k = A_k upsampled (``align_corners=True``, as
  pytorch-grad-cam) and min-max scaled to [0, 1]; the K masked inputs of a sample go through the model
  ``batch_size`` at a time. No gradients.

pytorch-grad-cam then min-max scales each map to [0, 1]; the attribution here keeps the map's own scale (the
scaling is one ``heatmap(..., rangescale="extrema")`` away, and metrics rank the same either way). The map is
copied to every input channel, so the attribution has the input's shape.
"""
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xai.analyzer import Analyzer
from xai.targets import one_hot_at, resolve_target
from xai.validation import check_batch_size, module_at, run_model

#: Layers that keep a feature map's layout: the default layer may end on them after the last convolution.
_SPATIAL = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Hardswish, nn.BatchNorm2d, nn.MaxPool2d,
            nn.AvgPool2d, nn.Dropout, nn.Dropout2d, nn.Identity)


def _has_conv(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in module.modules())


def default_layer(model: nn.Module) -> str:
    """The last convolutional block: from the model, the last child holding a Conv2d, descending while that child is
    a Sequential; in a Sequential the choice moves on over the activations, norms and pools after it (ResNet:
    ``layer4.1``; VGG: ``features.30``; the bundled CNN: ``0.13``)."""
    path, module = "", model
    while True:
        children = list(module.named_children())
        with_conv = [i for i, (_, child) in enumerate(children) if _has_conv(child)]
        if not with_conv:
            raise ValueError("the model has no Conv2d block for a CAM: give layer=<module path> of a layer that "
                             "yields feature maps (N, K, h, w)")
        last = with_conv[-1]
        if isinstance(module, nn.Sequential):
            while last + 1 < len(children) and isinstance(children[last + 1][1], _SPATIAL):
                last += 1
        name, child = children[last]
        path = f"{path}.{name}" if path else name
        if not isinstance(child, nn.Sequential):
            return path
        module = child


class _CAM(Analyzer):
    """A CAM of ``layer`` (a module path; None = ``default_layer``); subclasses define ``_map``."""

    needs_gradients = True

    def __init__(self, model: nn.Module, layer: str | None = None):
        super().__init__(model)
        self.layer = default_layer(model) if layer is None else layer
        self.module = module_at(model, self.layer, f"layer={self.layer!r}")

    @property
    def method(self) -> str:
        return f"{type(self).__name__}({self.layer})"

    def _attribute(self, x, target):
        captured: list[Tensor] = []
        handle = self.module.register_forward_hook(lambda module, args, out: captured.append(out))
        try:
            with torch.enable_grad():
                output = run_model(self.model, x.detach().requires_grad_(self.needs_gradients))
        finally:
            handle.remove()
        activations = captured[-1] if captured else None
        if not isinstance(activations, Tensor) or activations.dim() != 4:
            shape = tuple(activations.shape) if isinstance(activations, Tensor) else type(activations).__name__
            raise ValueError(f"layer={self.layer!r} gives {shape}, not feature maps (N, K, h, w): choose a "
                             "convolutional layer or block")
        resolved = resolve_target(target, output)
        grads = None
        if self.needs_gradients:
            (grads,) = torch.autograd.grad(output, activations, grad_outputs=one_hot_at(output, resolved))
        cam = self._map(activations.detach(), grads, x, resolved).clamp(min=0)
        upsampled = F.interpolate(cam[:, None], size=x.shape[2:], mode="bilinear", align_corners=False)
        return upsampled.expand_as(x).contiguous(), output.detach(), resolved

    def _map(self, activations: Tensor, grads: Tensor | None, x: Tensor, target: Tensor) -> Tensor:
        """(N, h, w) before the ReLU: the channel weights times the maps, summed over channels."""
        return (self._weights(activations, grads, x, target)[:, :, None, None] * activations).sum(1)

    def _weights(self, activations: Tensor, grads: Tensor | None, x: Tensor, target: Tensor) -> Tensor:
        raise NotImplementedError


class GradCAM(_CAM):
    """Channel weights: the mean gradient of the target logit over the feature map."""

    def _weights(self, activations, grads, x, target):
        return grads.mean(dim=(2, 3))


class GradCAMPlusPlus(_CAM):
    """Channel weights from positive gradients, each position weighted by the higher-order terms a_ij."""

    def _weights(self, activations, grads, x, target):
        squared = grads**2
        alpha = squared / (2 * squared + activations.sum(dim=(2, 3), keepdim=True) * squared * grads + 1e-6)
        alpha = torch.where(grads != 0, alpha, torch.zeros_like(alpha))
        return (grads.clamp(min=0) * alpha).sum(dim=(2, 3))


class LayerCAM(_CAM):
    """Each position of each map weighted by its own positive gradient."""

    def _map(self, activations, grads, x, target):
        return (grads.clamp(min=0) * activations).sum(1)


class ScoreCAM(_CAM):
    """Channel weights: softmax over channels of the target logit on the input masked by each upsampled map."""

    needs_gradients = False

    def __init__(self, model: nn.Module, layer: str | None = None, batch_size: int = 32):
        super().__init__(model, layer)
        self.batch_size = check_batch_size(batch_size)

    def _weights(self, activations, grads, x, target):
        n, k = activations.shape[:2]
        masks = F.interpolate(activations, size=x.shape[2:], mode="bilinear", align_corners=True)
        low = masks.amin(dim=(2, 3), keepdim=True)
        masks = (masks - low) / (masks.amax(dim=(2, 3), keepdim=True) - low + 1e-8)
        scores = torch.empty(n * k, dtype=x.dtype, device=x.device)
        with torch.no_grad():
            for start in range(0, n * k, self.batch_size):
                index = torch.arange(start, min(start + self.batch_size, n * k), device=x.device)
                sample, channel = index // k, index % k
                logits = self.model(x[sample] * masks[sample, channel][:, None])
                scores[index] = logits.gather(1, target[sample][:, None])[:, 0]
        return scores.view(n, k).softmax(dim=1)
