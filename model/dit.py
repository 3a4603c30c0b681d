"""Linear DiT: the flow-matching denoiser over DCAE latents (ACE-Step v1 / Sana style).

One token per latent frame (all 8 channels x 16 rows). Each block: AdaLN-modulated RMSNorm ->
ReLU linear self-attention (RoPE, fp32, padding-masked) -> softmax cross-attention over the
condition sequence [speaker, text, lyrics] -> AdaLN-modulated RMSNorm -> Mix-FFN. AdaLN-single:
one timestep MLP shared by all blocks, plus a learned 6 x width table per block.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from songmill.model.conditions import Conditions
from songmill.model.config import DiTConfig
from songmill.model.encoders import LyricEncoder
from songmill.model.layers import (
    RMSNorm,
    apply_rope,
    relu_linear_attention,
    rope_angles,
    timestep_features,
)
from torch import nn
from torch.utils.checkpoint import checkpoint


@dataclass
class DiTOutput:
    sample: torch.Tensor  # (B, 8, 16, F) predicted velocity (noise - x0)
    repa: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (B, F, dim)


class LinearSelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, head_dim: int, eps: float) -> None:
        super().__init__()
        self.heads, self.head_dim, self.eps = heads, head_dim, eps
        self.qkv = nn.Linear(width, 3 * heads * head_dim)
        self.out = nn.Linear(heads * head_dim, width)

    def forward(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None
    ) -> torch.Tensor:
        batch, frames, _ = x.shape
        q, k, v = self.qkv(x).view(batch, frames, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        out = relu_linear_attention(q, k, v, mask, self.eps)
        return self.out(out.transpose(1, 2).reshape(batch, frames, -1).to(x.dtype))


class CrossAttention(nn.Module):
    def __init__(self, width: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.q = nn.Linear(width, heads * head_dim)
        self.kv = nn.Linear(width, 2 * heads * head_dim)
        self.out = nn.Linear(heads * head_dim, width)

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor:
        batch, frames, _ = x.shape
        q = self.q(x).view(batch, frames, self.heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(context).view(batch, -1, 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=context_mask[:, None, None, :])
        return self.out(out.transpose(1, 2).reshape(batch, frames, -1))


class MixFFN(nn.Module):
    """1x1 conv -> depthwise 1-D conv (k=3) -> GLU (SiLU gate) -> 1x1 conv, over frames."""

    def __init__(self, width: int, ratio: float) -> None:
        super().__init__()
        hidden = int(width * ratio)
        self.expand = nn.Linear(width, 2 * hidden)
        self.depthwise = nn.Conv1d(2 * hidden, 2 * hidden, 3, padding=1, groups=2 * hidden)
        self.project = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        h = F.silu(self.expand(x))
        if mask is not None:  # padded frames must not leak into neighbours through the conv
            h = h.masked_fill(~mask[..., None], 0.0)
        h = self.depthwise(h.transpose(1, 2)).transpose(1, 2)
        h, gate = h.chunk(2, dim=-1)
        return self.project(h * F.silu(gate))


class DiTBlock(nn.Module):
    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        width = cfg.width
        self.norm1 = RMSNorm(width, affine=False)
        self.attention = LinearSelfAttention(width, cfg.heads, cfg.head_dim, cfg.linear_attention_eps)
        self.norm_cross = RMSNorm(width)
        self.cross_attention = CrossAttention(width, cfg.heads, cfg.head_dim)
        self.norm2 = RMSNorm(width, affine=False)
        self.ffn = MixFFN(width, cfg.ffn_ratio)
        self.scale_shift_table = nn.Parameter(torch.randn(6, width) / width**0.5)

    def forward(
        self,
        x: torch.Tensor,
        time6: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None,
        context: torch.Tensor,
        context_mask: torch.Tensor,
    ) -> torch.Tensor:
        modulation = (self.scale_shift_table[None] + time6).to(x.dtype)
        shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = modulation[:, :, None].unbind(1)
        h = self.norm1(x) * (1 + scale_sa) + shift_sa
        x = x + gate_sa * self.attention(h, rope, mask)
        x = x + self.cross_attention(self.norm_cross(x), context, context_mask)
        h = self.norm2(x) * (1 + scale_ff) + shift_ff
        return x + gate_ff * self.ffn(h, mask)


class LinearDiT(nn.Module):
    config_class = DiTConfig

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        if not 1 <= cfg.repa_block <= cfg.depth:
            raise ValueError(f"repa_block {cfg.repa_block} outside 1..{cfg.depth}")
        self.cfg = cfg
        width = cfg.width
        self.patch_embed = nn.Linear(cfg.patch_dim, width)
        self.time_embed = nn.Sequential(
            nn.Linear(cfg.timestep_freq_dim, width), nn.SiLU(), nn.Linear(width, width)
        )
        self.time_block = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))
        self.speaker_proj = nn.Linear(cfg.speaker_dim, width)
        self.text_proj = nn.Linear(cfg.text_dim, width)
        self.lyric_encoder = LyricEncoder(cfg.lyrics)
        self.lyric_proj = nn.Linear(cfg.lyrics.width, width)
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.depth))
        self.norm_out = RMSNorm(width, affine=False)
        self.final_scale_shift = nn.Parameter(torch.randn(2, width) / width**0.5)
        self.proj_out = nn.Linear(width, cfg.patch_dim)
        self.repa_projectors = nn.ModuleDict(
            {
                name: nn.Sequential(
                    nn.Linear(width, cfg.repa_hidden), nn.SiLU(),
                    nn.Linear(cfg.repa_hidden, cfg.repa_hidden), nn.SiLU(),
                    nn.Linear(cfg.repa_hidden, dim),
                )
                for name, dim in cfg.repa_targets.items()
            }
        )
        # DiT-style init: output and AdaLN projections start at zero (each block starts near identity)
        for layer in (self.proj_out, self.time_block[1]):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def encode_conditions(self, cond: Conditions) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1 + Lt + Ll, width) context and its mask, in the order [speaker, text, lyrics]."""
        dtype = self.patch_embed.weight.dtype
        speaker = self.speaker_proj(cond.speaker.to(dtype))[:, None]
        text = self.text_proj(cond.text.to(dtype))
        lyrics = self.lyric_proj(self.lyric_encoder(cond.lyrics, cond.lyrics_mask))
        speaker_mask = torch.ones(cond.batch_size, 1, dtype=torch.bool, device=speaker.device)
        context = torch.cat([speaker, text.to(speaker.dtype), lyrics.to(speaker.dtype)], dim=1)
        mask = torch.cat([speaker_mask, cond.text_mask.bool(), cond.lyrics_mask.bool()], dim=1)
        return context, mask

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        cond: Conditions,
        frame_mask: torch.Tensor | None = None,
        return_repa: bool = True,
    ) -> DiTOutput:
        """x (B, 8, 16, F) noisy latent; timestep (B,) sigma in [0, 1]; frame_mask (B, F) True = real."""
        batch, channels, rows, frames = x.shape
        patches = x.permute(0, 3, 1, 2).reshape(batch, frames, channels * rows)
        tokens = self.patch_embed(patches.to(self.patch_embed.weight.dtype))
        if frame_mask is not None:
            frame_mask = frame_mask.bool()
            tokens = tokens.masked_fill(~frame_mask[..., None], 0.0)
        t = timestep.to(x.device).float().expand(batch) * 1000.0
        time = self.time_embed(timestep_features(t, self.cfg.timestep_freq_dim).to(tokens.dtype))
        time6 = self.time_block(time).view(batch, 6, -1)
        context, context_mask = self.encode_conditions(cond)
        rope = rope_angles(frames, self.cfg.head_dim, self.cfg.rope_theta, device=x.device)
        repa: dict[str, torch.Tensor] = {}
        h = tokens
        for index, block in enumerate(self.blocks):
            if self.cfg.gradient_checkpointing and self.training:
                h = checkpoint(block, h, time6, rope, frame_mask, context, context_mask, use_reentrant=False)
            else:
                h = block(h, time6, rope, frame_mask, context, context_mask)
            if return_repa and index + 1 == self.cfg.repa_block:
                repa = {name: head(h) for name, head in self.repa_projectors.items()}
        shift, scale = (self.final_scale_shift[None] + time[:, None]).to(h.dtype).unbind(1)
        h = self.norm_out(h) * (1 + scale[:, None]) + shift[:, None]
        out = self.proj_out(h)
        if frame_mask is not None:
            out = out.masked_fill(~frame_mask[..., None], 0.0)
        sample = out.view(batch, frames, channels, rows).permute(0, 2, 3, 1)
        return DiTOutput(sample=sample, repa=repa)
