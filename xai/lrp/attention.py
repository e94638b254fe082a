"""Attention ops as LRP sees them: decomposed into the ops that have rules (``F.linear``, matmuls, a softmax).

``F.scaled_dot_product_attention`` (timm's ``Attention``, torchvision's ``MultiheadAttention`` with
``need_weights=False``) and ``F.multi_head_attention_forward`` (``nn.MultiheadAttention``) are fused kernels that
the engine cannot look into; these functions compute the same values from ops it intercepts, so that in the LRP
forward pass each part gets its rule: the projections (weights used functionally) and ``weights @ values`` the
composite's matmul rule, ``query @ key^T`` too, the softmax its softmax rule (AttnLRP: Achtibat et al. 2024's; CP-LRP:
a constant, so that relevance flows through the values only, as LXT's ``cp_multi_head_attention_forward``).
The model check runs the same decomposition, so it checks exactly what the engine explains.
"""
import inspect
from contextlib import nullcontext
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def _additive(mask: Tensor, dtype: torch.dtype, allowed_where_true: bool) -> Tensor:
    """A boolean mask as an additive one: 0 where attention is allowed, the dtype's lowest value where not (finite,
    so that a masked score carries no relevance instead of a NaN: its softmax weight is exactly 0)."""
    if mask.dtype != torch.bool:
        return mask.to(dtype)
    blocked = ~mask if allowed_where_true else mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(blocked, torch.finfo(dtype).min)


def _linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """F.linear as one matrix product: on a non-contiguous x (the sequence-first view nn.MultiheadAttention passes)
    torch would run a batched product with the weight expanded over the batch, several times slower."""
    return F.linear(x.reshape(-1, x.shape[-1]), weight, bias).reshape(x.shape[:-1] + (weight.shape[0],))


def _weights(query: Tensor, key: Tensor, mask: Tensor | None, scale: float) -> Tensor:
    scores = torch.matmul(query * scale, key.transpose(-2, -1))
    return torch.softmax(scores if mask is None else scores + mask, dim=-1)


#: How the engine multiplies constant attention weights with the values (CP-LRP): called with a function of the
#: values that computes the weights and the product, and the values; it may call the function again later.
ConstantProduct = Callable[[Callable[[Tensor], Tensor], Tensor], Tensor]


def _attention(query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None, dropout_p: float,
               scale: float | None, constant_weights: ConstantProduct | None, need_weights: bool
               ) -> tuple[Tensor, Tensor | None]:
    """softmax(query key^T * scale + mask) value, and the attention weights; ``mask`` additive. With
    ``constant_weights`` (CP-LRP) no relevance flows through the weights: they are computed outside autograd, from
    query and key, by the function handed to ``constant_weights``, so that the weights need not be kept for the
    backward pass (query and key share their storage with the values, which are kept anyway)."""
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    if constant_weights is not None and dropout_p == 0:
        query, key = query.detach(), key.detach()
        output = constant_weights(lambda v: torch.matmul(_weights(query, key, mask, scale), v), value)
        if not need_weights:
            return output, None
        with torch.no_grad():
            return output, _weights(query, key, mask, scale)
    with torch.no_grad() if constant_weights is not None else nullcontext():
        weights = _weights(query, key, mask, scale)
    if dropout_p > 0:
        weights = F.dropout(weights, dropout_p)
    return torch.matmul(weights, value), weights


def scaled_dot_product_attention(query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None = None,
                                 dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
                                 enable_gqa: bool = False, *, constant_weights: ConstantProduct | None = None) -> Tensor:
    """``F.scaled_dot_product_attention`` (a boolean ``attn_mask`` marks what may be attended to)."""
    if is_causal:
        attn_mask = torch.ones(query.shape[-2], key.shape[-2], dtype=torch.bool, device=query.device).tril()
    mask = None if attn_mask is None else _additive(attn_mask, query.dtype, allowed_where_true=True)
    return _attention(query, key, value, mask, dropout_p, scale, constant_weights, need_weights=False)[0]


def multi_head_attention_forward(
        query: Tensor, key: Tensor, value: Tensor, embed_dim_to_check: int, num_heads: int,
        in_proj_weight: Tensor | None, in_proj_bias: Tensor | None, bias_k: Tensor | None, bias_v: Tensor | None,
        add_zero_attn: bool, dropout_p: float, out_proj_weight: Tensor, out_proj_bias: Tensor | None,
        training: bool = True, key_padding_mask: Tensor | None = None, need_weights: bool = True,
        attn_mask: Tensor | None = None, use_separate_proj_weight: bool = False, q_proj_weight: Tensor | None = None,
        k_proj_weight: Tensor | None = None, v_proj_weight: Tensor | None = None, static_k: Tensor | None = None,
        static_v: Tensor | None = None, average_attn_weights: bool = True, is_causal: bool = False, *,
        constant_weights: ConstantProduct | None = None) -> tuple[Tensor, Tensor | None]:
    """``F.multi_head_attention_forward`` (sequence-first; ``True`` in a boolean mask marks what may not be
    attended to), without ``bias_k``/``bias_v``, ``add_zero_attn`` and static keys (``unsupported``)."""
    unbatched = query.dim() == 2
    if unbatched:
        query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
        key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
    tgt_len, batch, embed_dim = query.shape
    head_dim = embed_dim // num_heads
    if use_separate_proj_weight:
        weights = (q_proj_weight, k_proj_weight, v_proj_weight)
    else:
        weights = in_proj_weight.chunk(3)
    biases = (None, None, None) if in_proj_bias is None else in_proj_bias.chunk(3)
    if query is key and key is value and not use_separate_proj_weight:  # self-attention: one packed projection
        q, k, v = _linear(query, in_proj_weight, in_proj_bias).chunk(3, dim=-1)
    else:
        q, k, v = (_linear(x, w, b) for x, w, b in zip((query, key, value), weights, biases))
    q, k, v = (t.reshape(t.shape[0], batch, num_heads, head_dim).permute(1, 2, 0, 3) for t in (q, k, v))
    mask = None
    if attn_mask is not None:
        mask = _additive(attn_mask, q.dtype, allowed_where_true=False)
        mask = mask.reshape((1, 1) + tuple(mask.shape) if mask.dim() == 2 else (batch, num_heads) + mask.shape[1:])
    elif is_causal:
        mask = _additive(torch.ones(tgt_len, k.shape[-2], dtype=torch.bool, device=q.device).tril(), q.dtype, True)
    if key_padding_mask is not None:
        padding = _additive(key_padding_mask, q.dtype, allowed_where_true=False).reshape(batch, 1, 1, -1)
        mask = padding if mask is None else mask + padding
    output, attention = _attention(q, k, v, mask, dropout_p if training else 0.0, None, constant_weights,
                                   need_weights)
    output = _linear(output.permute(2, 0, 1, 3).reshape(tgt_len, batch, embed_dim), out_proj_weight, out_proj_bias)
    if unbatched:
        output = output.squeeze(1)
    if not need_weights:
        return output, None
    if average_attn_weights:
        attention = attention.mean(dim=1)
    return output, attention.squeeze(0) if unbatched else attention


DECOMPOSITIONS: dict[str, Callable] = {
    "scaled_dot_product_attention": scaled_dot_product_attention,
    "multi_head_attention_forward": multi_head_attention_forward,
}


def unsupported(name: str, args: tuple, kwargs: dict) -> str | None:
    """Why the attention op ``name`` cannot be decomposed with these arguments, or None if it can."""
    bound = inspect.signature(DECOMPOSITIONS[name]).bind(*args, **kwargs).arguments
    if bound.get("enable_gqa"):
        return "enable_gqa=True (grouped-query attention) is not supported"
    for option in ("bias_k", "bias_v", "static_k", "static_v"):
        if bound.get(option) is not None:
            return f"{option} is not supported"
    if bound.get("add_zero_attn"):
        return "add_zero_attn=True is not supported"
    return None


__all__ = ["ConstantProduct", "DECOMPOSITIONS", "multi_head_attention_forward", "scaled_dot_product_attention", "unsupported"]
