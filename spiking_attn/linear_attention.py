"""Multihead linear self-attention and the analytic gradient of its tokenwise mean-squared-error loss.

The cortico-thalamic view of attention reads each head as a cortical area: superficial pyramidal
cells compute the attention mask ``S_h = scale * (X W_Q^h)(X W_K^h)^T`` (no softmax: linear
attention), deep pyramidal cells carry the values ``V_h = X W_V^h``, and the thalamus combines the
areas through ``W_O``::

    Y = sum_h S_h V_h W_O^h                      X: [B, N, D], Y: [B, N, D]
    L = 1 / (B N) * sum_{b, n} ||Y_bn - T_bn||^2 / 2

With ``causal`` the mask keeps ``j <= i`` only (``S_h`` times the lower-triangular ones).

``mhla_mse_gradients`` returns the gradient of ``L`` with respect to every weight and to the input,
written out by the chain rule (no autograd). With ``G = dL/dY = (Y - T) / (B N)``, per head:

    dW_O^h = sum_b (S_h V_h)^T G                 dU_h = G (W_O^h)^T          (U_h = S_h V_h)
    dS_h   = dU_h V_h^T (masked)                 dV_h = S_h^T dU_h
    dQ_h   = scale * dS_h K_h                    dK_h = scale * dS_h^T Q_h
    dW_Q^h = sum_b X^T dQ_h,  dW_K^h = sum_b X^T dK_h,  dW_V^h = sum_b X^T dV_h
    dX     = sum_h dQ_h (W_Q^h)^T + dK_h (W_K^h)^T + dV_h (W_V^h)^T

The tests check every term against autograd in float64 (``tests/test_linear_attention.py``).

``superficial_masks`` and ``masked_values`` are the two halves of the block on head-merged tensors
``[..., N, D]``; the cortico-thalamic mechanism (``mechanisms/cortico_thalamic.py``) builds both of its
twins from them, and ``mhla_forward`` is their composition with plain linear maps.
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import torch

from .attention import _merge_heads, _split_heads
from .errors import DTypeError, ShapeError, check_tensor


def _check(x: torch.Tensor, wq, wk, wv, wo) -> tuple:
    check_tensor(x, "x", ndim=3)
    for name, w in (("wq", wq), ("wk", wk), ("wv", wv), ("wo", wo)):
        check_tensor(w, name, ndim=3)
        if w.dtype != x.dtype:
            raise DTypeError(f"{name} has dtype {w.dtype} but x has {x.dtype}")
    heads, dim, width = wq.shape
    if dim != x.shape[-1]:
        raise ShapeError(f"wq must be [H, D, Dh] with D = {x.shape[-1]} (the last axis of x), got {tuple(wq.shape)}")
    for name, w in (("wk", wk), ("wv", wv)):
        if w.shape != wq.shape:
            raise ShapeError(f"{name} must have the shape of wq {tuple(wq.shape)}, got {tuple(w.shape)}")
    if wo.shape != (heads, width, dim):
        raise ShapeError(f"wo must be [H, Dh, D] = [{heads}, {width}, {dim}], got {tuple(wo.shape)}")
    return heads, dim, width


def _mask(n: int, like: torch.Tensor, m: Optional[int] = None) -> torch.Tensor:
    return torch.ones(n, n if m is None else m, dtype=like.dtype, device=like.device).tril()


def superficial_masks(q: torch.Tensor, k: torch.Tensor, heads: int, scale: float, causal: bool = False) -> torch.Tensor:
    """The masks ``scale * Q_h K_h^T`` per area: ``q`` ``[..., N, D]`` and ``k`` ``[..., M, D]`` (heads are
    contiguous channel groups of ``D / heads``) -> ``[..., H, N, M]``; causal keeps ``m <= n``."""
    qh, kh = _split_heads(q, heads), _split_heads(k, heads)  # [..., H, N|M, Dh]
    s = scale * (qh @ kh.transpose(-2, -1))  # [..., H, N, M]
    return s * _mask(s.shape[-2], s, s.shape[-1]) if causal else s


def masked_values(masks: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Each area's values read through its mask: ``masks`` ``[..., H, N, M]``, ``v`` ``[..., M, D]`` ->
    ``[..., N, D]`` (area h fills the channels of head h)."""
    return _merge_heads(masks @ _split_heads(v, masks.shape[-3]))  # [..., H, N, Dh] -> [..., N, D]


def mhla_forward(x: torch.Tensor, wq: torch.Tensor, wk: torch.Tensor, wv: torch.Tensor, wo: torch.Tensor,
                 scale: Optional[float] = None, causal: bool = False) -> torch.Tensor:
    """``Y = sum_h S_h V_h W_O^h`` for ``x`` ``[B, N, D]``; weights ``wq, wk, wv`` ``[H, D, Dh]`` and ``wo``
    ``[H, Dh, D]``; ``scale`` defaults to ``1 / sqrt(Dh)``."""
    heads, _, width = _check(x, wq, wk, wv, wo)
    scale = 1.0 / math.sqrt(width) if scale is None else float(scale)
    q, k, v = (x @ w.transpose(0, 1).flatten(1) for w in (wq, wk, wv))  # [B, N, H*Dh], heads contiguous
    areas = masked_values(superficial_masks(q, k, heads, scale, causal), v)  # [B, N, H*Dh]
    return areas @ wo.flatten(0, 1)  # [B, N, D]: the thalamic readout of the areas


def mhla_mse_gradients(x: torch.Tensor, target: torch.Tensor, wq: torch.Tensor, wk: torch.Tensor,
                       wv: torch.Tensor, wo: torch.Tensor, scale: Optional[float] = None,
                       causal: bool = False) -> Dict[str, torch.Tensor]:
    """The loss ``L`` (module docstring) and its analytic gradients: a dict with ``loss`` and ``wq``, ``wk``,
    ``wv``, ``wo``, ``x``, each the shape of the tensor it is the gradient of."""
    _, _, width = _check(x, wq, wk, wv, wo)
    check_tensor(target, "target", ndim=3)
    if target.shape != x.shape:
        raise ShapeError(f"target must have the shape of x {tuple(x.shape)}, got {tuple(target.shape)}")
    scale = 1.0 / math.sqrt(width) if scale is None else float(scale)
    b, n, _ = x.shape
    q, k, v = (torch.einsum("bnd,hde->bhne", x, w) for w in (wq, wk, wv))  # [B, H, N, Dh]
    mask = _mask(n, x) if causal else None
    s = scale * q @ k.transpose(-2, -1)  # [B, H, N, N]
    if mask is not None:
        s = s * mask
    u = s @ v  # [B, H, N, Dh]
    y = torch.einsum("bhne,hed->bnd", u, wo)
    residual = y - target
    loss = residual.pow(2).sum() / (2 * b * n)
    g = residual / (b * n)  # dL/dY, [B, N, D]
    d_wo = torch.einsum("bhne,bnd->hed", u, g)
    d_u = torch.einsum("bnd,hed->bhne", g, wo)
    d_s = d_u @ v.transpose(-2, -1)  # [B, H, N, N]
    if mask is not None:
        d_s = d_s * mask
    d_v = s.transpose(-2, -1) @ d_u
    d_q = scale * d_s @ k
    d_k = scale * d_s.transpose(-2, -1) @ q
    grads = {name: torch.einsum("bnd,bhne->hde", x, d) for name, d in (("wq", d_q), ("wk", d_k), ("wv", d_v))}
    d_x = sum(torch.einsum("bhne,hde->bnd", d, w) for d, w in ((d_q, wq), (d_k, wk), (d_v, wv)))
    return {"loss": loss, **grads, "wo": d_wo, "x": d_x}
