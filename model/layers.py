"""Shared building blocks: RMS norms, rotary embeddings, ReLU linear attention, timestep features."""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn


class ChannelRMSNorm(nn.Module):
    """RMSNorm over the channel axis of a (B, C, ...) tensor, with weight and bias."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight.to(x.dtype), self.bias.to(x.dtype)
        h = F.rms_norm(x.movedim(1, -1), (x.shape[1],), weight, self.eps) + bias
        return h.movedim(-1, 1)


class RMSNorm(nn.Module):
    """RMSNorm over the last axis; the optional weight follows the input dtype (autocast-safe)."""

    def __init__(self, dim: int, eps: float = 1e-6, affine: bool = True) -> None:
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.to(x.dtype)
        return F.rms_norm(x, (self.dim,), weight, self.eps)


def rope_angles(
    length: int, dim: int, theta: float = 10000.0, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each (length, dim), for positions 0..length-1 (rotate-half layout, fp32)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim))
    positions = torch.arange(length, device=device, dtype=torch.float32)
    freqs = torch.outer(positions, inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (..., N, d) by position; computed in fp32, returned in fp32."""
    x = x.float()
    first, second = x.chunk(2, dim=-1)
    rotated = torch.cat([-second, first], dim=-1)
    return x * cos + rotated * sin


def apply_rope_interleaved(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """ACE-Step v1's rotation: pairs (2i, 2i+1) rotate against `rope_angles` tables, whose
    columns are cat(freqs, freqs), so the two halves of a pair see different frequencies.

    Not the textbook pairing, but the released weights were trained with it; fp32 in, fp32 out.
    """
    x = x.float()
    even, odd = x[..., 0::2], x[..., 1::2]
    rotated = torch.stack([-odd, even], dim=-1).flatten(-2)
    return x * cos + rotated * sin


def rotate(x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], layout: str) -> torch.Tensor:
    """Apply rotary positions in the named layout ("interleaved" = ACE-Step, "half")."""
    if layout == "interleaved":
        return apply_rope_interleaved(x, *rope)
    if layout == "half":
        return apply_rope(x, *rope)
    raise ValueError(f"unknown rope layout {layout!r}; expected 'interleaved' or 'half'")


def relu_linear_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Linear attention with the ReLU kernel, in fp32, for (B, H, N, d) inputs.

    out_i = sum_j phi(q_i).phi(k_j) v_j / sum_j phi(q_i).phi(k_j), phi = ReLU, computed as
    phi(Q) (phi(K)^T [V, 1]): a ones column appended to V makes the last output column the
    normaliser, so numerator and denominator come from one pair of matmuls; O(N d^2).
    `mask` (B, N) bool keeps padded positions (False) out of every sum.
    """
    device_type = q.device.type
    no_autocast = (
        torch.autocast(device_type, enabled=False)
        if device_type in ("cuda", "cpu", "xpu", "mps")
        else contextlib.nullcontext()  # meta tensors (FLOP counting) have no autocast
    )
    with no_autocast:
        q, k, v = F.relu(q.float()), F.relu(k.float()), v.float()
        if mask is not None:
            keep = mask[:, None, :, None]
            k = k.masked_fill(~keep, 0.0)
            v = v.masked_fill(~keep, 0.0)
        v = F.pad(v, (0, 1), value=1.0)
        kv = torch.matmul(k.transpose(-1, -2), v)  # (B, H, d, d + 1)
        out = torch.matmul(q, kv)  # (B, H, N, d + 1)
        return out[..., :-1] / (out[..., -1:] + eps)


def relu_quadratic_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    eps: float = 1e-6,
) -> torch.Tensor:
    """The same kernelised attention computed naively through the (N, N) score matrix (tests)."""
    q, k, v = F.relu(q.float()), F.relu(k.float()), v.float()
    scores = torch.matmul(q, k.transpose(-1, -2))  # (B, H, N, N)
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None, None, :], 0.0)
    return torch.matmul(scores, v) / (scores.sum(dim=-1, keepdim=True) + eps)


def timestep_features(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features (cos | sin) of (B,) timesteps, fp32."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half
    )
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
