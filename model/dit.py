"""Linear DiT: the flow-matching denoiser over DCAE latents, laid out as ACE-Step v1's
`ACEStepTransformer2DModel` (module names and tensor shapes equal the release's, so importing
and exporting its weights is a key-for-key copy; see model/acestep.py).

One token per latent frame (all 8 channels x 16 rows). Each block: AdaLN-modulated RMSNorm ->
ReLU linear self-attention (RoPE, fp32, padding-masked) -> softmax cross-attention over the
condition sequence [speaker, text, lyrics] (RoPE on both sides by default) -> AdaLN-modulated
RMSNorm -> GLU Mix-FFN. AdaLN-single: one timestep MLP shared by all blocks, plus a learned
6 x width table per block.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from songmill.model.conditions import Conditions
from songmill.model.config import DiTConfig
from songmill.model.encoders import build_lyric_encoder
from songmill.model.layers import (
    RMSNorm,
    relu_linear_attention,
    rope_angles,
    rotate,
    timestep_features,
)
from torch import nn
from torch.utils.checkpoint import checkpoint

# the DiT sees sigma in [0, 1]; its timestep embedding was trained on sigma x 1000
TIMESTEP_SCALE = 1000.0


@dataclass
class DiTOutput:
    sample: torch.Tensor  # (B, 8, 16, F) predicted velocity (noise - x0)
    repa: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (B, F, dim)


class _Projections(nn.Module):
    """to_q / to_k / to_v / to_out.0: the diffusers Attention names the release's weights use."""

    def __init__(self, width: int, inner: int) -> None:
        super().__init__()
        self.to_q = nn.Linear(width, inner)
        self.to_k = nn.Linear(width, inner)
        self.to_v = nn.Linear(width, inner)
        self.to_out = nn.ModuleList([nn.Linear(inner, width)])


class LinearSelfAttention(_Projections):
    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__(cfg.width, cfg.heads * cfg.head_dim)
        self.heads, self.head_dim = cfg.heads, cfg.head_dim
        self.eps, self.rope_layout = cfg.linear_attention_eps, cfg.rope_layout

    def forward(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None
    ) -> torch.Tensor:
        batch, frames, _ = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, frames, self.heads, self.head_dim).transpose(1, 2)

        q = rotate(heads(self.to_q(x)), rope, self.rope_layout)
        k = rotate(heads(self.to_k(x)), rope, self.rope_layout)
        v = heads(self.to_v(x))
        if (
            mask is not None
        ):  # as ACE-Step: padded queries give zeros, padded keys count for nothing
            q = q.masked_fill(~mask[:, None, :, None], 0.0)
        out = relu_linear_attention(q, k, v, mask, self.eps)
        return self.to_out[0](out.transpose(1, 2).reshape(batch, frames, -1).to(x.dtype))


class CrossAttention(_Projections):
    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__(cfg.width, cfg.heads * cfg.head_dim)
        self.heads, self.head_dim = cfg.heads, cfg.head_dim
        self.use_rope, self.rope_layout = cfg.cross_attention_rope, cfg.rope_layout

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        context_mask: torch.Tensor,
        frame_mask: torch.Tensor | None,
        rope: tuple[torch.Tensor, torch.Tensor],
        context_rope: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        batch, frames, _ = x.shape
        q = self.to_q(x).view(batch, frames, self.heads, self.head_dim).transpose(1, 2)
        k = self.to_k(context).view(batch, -1, self.heads, self.head_dim).transpose(1, 2)
        v = self.to_v(context).view(batch, -1, self.heads, self.head_dim).transpose(1, 2)
        if self.use_rope:
            q = rotate(q, rope, self.rope_layout).to(v.dtype)
            k = rotate(k, context_rope, self.rope_layout).to(v.dtype)
        allowed = context_mask[:, None, :]
        if frame_mask is not None:  # ACE-Step masks (query, key) pairs; padded rows attend nothing
            allowed = frame_mask[:, :, None] & allowed
        bias = torch.zeros(allowed.shape, dtype=q.dtype, device=q.device)
        bias = bias.masked_fill(~allowed, float("-inf"))[:, None]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        # torch's SDPA returns zeros for rows with no allowed key; keep that explicit (no NaN)
        out = torch.nan_to_num(out, nan=0.0)
        return self.to_out[0](out.transpose(1, 2).reshape(batch, frames, -1))


class _Conv(nn.Module):
    """A Conv1d under `.conv`, as the release's ConvLayer names it."""

    def __init__(
        self, cin: int, cout: int, kernel: int, groups: int = 1, bias: bool = True
    ) -> None:
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, kernel, padding=kernel // 2, groups=groups, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class MixFFN(nn.Module):
    """1x1 conv + SiLU -> depthwise conv (k=3) -> GLU (SiLU gate) -> 1x1 conv (no bias), over frames."""

    def __init__(self, width: int, ratio: float) -> None:
        super().__init__()
        hidden = int(width * ratio)
        self.inverted_conv = _Conv(width, 2 * hidden, 1)
        self.depth_conv = _Conv(2 * hidden, 2 * hidden, 3, groups=2 * hidden)
        self.point_conv = _Conv(hidden, width, 1, bias=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        h = F.silu(self.inverted_conv(x.transpose(1, 2)))
        if mask is not None:  # strict padding: padded frames must not leak in through the conv
            h = h.masked_fill(~mask[:, None, :], 0.0)
        h, gate = self.depth_conv(h).chunk(2, dim=1)
        return self.point_conv(h * F.silu(gate)).transpose(1, 2)


class DiTBlock(nn.Module):
    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        width = cfg.width
        self.strict_padding = cfg.strict_padding
        self.norm1 = RMSNorm(width, affine=False)
        self.attn = LinearSelfAttention(cfg)
        self.norm_cross = RMSNorm(width) if cfg.cross_attention_norm else None
        self.cross_attn = CrossAttention(cfg)
        self.norm2 = RMSNorm(width, affine=False)
        self.ff = MixFFN(width, cfg.ffn_ratio)
        self.scale_shift_table = nn.Parameter(torch.randn(6, width) / width**0.5)

    def forward(
        self,
        x: torch.Tensor,
        time6: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None,
        context: torch.Tensor,
        context_mask: torch.Tensor,
        context_rope: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        modulation = (self.scale_shift_table[None] + time6).to(x.dtype)
        shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = modulation[:, :, None].unbind(1)
        h = self.norm1(x) * (1 + scale_sa) + shift_sa
        x = x + gate_sa * self.attn(h, rope, mask)
        h = x if self.norm_cross is None else self.norm_cross(x)
        x = x + self.cross_attn(h, context, context_mask, mask, rope, context_rope)
        h = self.norm2(x) * (1 + scale_ff) + shift_ff
        return x + gate_ff * self.ff(h, mask if self.strict_padding else None)


class TimestepEmbedder(nn.Module):
    """diffusers' TimestepEmbedding: linear_1 -> SiLU -> linear_2."""

    def __init__(self, freq_dim: int, width: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(freq_dim, width)
        self.linear_2 = nn.Linear(width, width)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(features)))


class PatchEmbed(nn.Module):
    """(B, 8, 16, F) latent -> (B, F, width) tokens.

    "conv" (ACE-Step): Conv2d over the 16 rows -> GroupNorm(32) -> 1x1 conv. GroupNorm pools
    over frames, so with strict padding its statistics are taken over the real frames only.
    """

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.kind = cfg.patch_embed
        if self.kind == "conv":
            if cfg.patch_hidden % 32:
                raise ValueError(
                    f"patch_hidden {cfg.patch_hidden} must be a multiple of 32 (GroupNorm)"
                )
            self.early_conv_layers = nn.Sequential(
                nn.Conv2d(
                    cfg.in_channels,
                    cfg.patch_hidden,
                    (cfg.latent_height, 1),
                    (cfg.latent_height, 1),
                ),
                nn.GroupNorm(32, cfg.patch_hidden, eps=1e-6),
                nn.Conv2d(cfg.patch_hidden, cfg.width, 1),
            )
        elif self.kind == "linear":
            self.linear = nn.Linear(cfg.patch_dim, cfg.width)
        else:
            raise ValueError(f"unknown patch_embed {self.kind!r}; expected 'conv' or 'linear'")

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        batch, channels, rows, frames = x.shape
        if self.kind == "linear":
            return self.linear(x.permute(0, 3, 1, 2).reshape(batch, frames, channels * rows))
        first, norm, last = self.early_conv_layers
        h = first(x)  # (B, hidden, 1, F)
        if mask is None:
            h = norm(h)
        else:
            h = _masked_group_norm(h, norm, mask)
        return last(h).flatten(2).transpose(1, 2)


def _masked_group_norm(h: torch.Tensor, norm: nn.GroupNorm, mask: torch.Tensor) -> torch.Tensor:
    """GroupNorm of (B, C, 1, F) whose statistics ignore frames where `mask` is False."""
    batch, channels, _, frames = h.shape
    groups = h.view(batch, norm.num_groups, channels // norm.num_groups, frames)
    keep = mask[:, None, None, :].to(h.dtype)
    count = keep.sum(dim=(2, 3), keepdim=True).clamp_min(1.0) * groups.shape[2]
    mean = (groups * keep).sum(dim=(2, 3), keepdim=True) / count
    var = ((groups - mean).square() * keep).sum(dim=(2, 3), keepdim=True) / count
    normed = ((groups - mean) / torch.sqrt(var + norm.eps)).view_as(h)
    return normed * norm.weight[None, :, None, None] + norm.bias[None, :, None, None]


class FinalLayer(nn.Module):
    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.norm_final = RMSNorm(cfg.width, affine=False)
        self.linear = nn.Linear(cfg.width, cfg.patch_dim)
        self.scale_shift_table = nn.Parameter(torch.randn(2, cfg.width) / cfg.width**0.5)

    def forward(self, h: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        shift, scale = (self.scale_shift_table[None] + time[:, None]).to(h.dtype).unbind(1)
        out = self.linear(self.norm_final(h) * (1 + scale[:, None]) + shift[:, None])
        batch, frames, _ = out.shape
        channels, rows = self.cfg.in_channels, self.cfg.latent_height
        if self.cfg.output_order == "row_channel":
            return out.view(batch, frames, rows, channels).permute(0, 3, 2, 1)
        if self.cfg.output_order == "channel_row":
            return out.view(batch, frames, channels, rows).permute(0, 2, 3, 1)
        raise ValueError(f"unknown output_order {self.cfg.output_order!r}")


class LinearDiT(nn.Module):
    config_class = DiTConfig

    def __init__(self, cfg: DiTConfig) -> None:
        super().__init__()
        if not 1 <= cfg.repa_block <= cfg.depth:
            raise ValueError(f"repa_block {cfg.repa_block} outside 1..{cfg.depth}")
        self.cfg = cfg
        width = cfg.width
        self.proj_in = PatchEmbed(cfg)
        self.timestep_embedder = TimestepEmbedder(cfg.timestep_freq_dim, width)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))
        self.speaker_embedder = nn.Linear(cfg.speaker_dim, width)
        self.genre_embedder = nn.Linear(cfg.text_dim, width)
        self.lyric_embs = nn.Embedding(cfg.lyrics.vocab_size, cfg.lyrics.token_dim)
        self.lyric_encoder = build_lyric_encoder(cfg.lyrics)
        self.lyric_proj = nn.Linear(cfg.lyrics.width, width)
        self.transformer_blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.depth))
        self.final_layer = FinalLayer(cfg)
        hidden = cfg.repa_width
        # one projector per REPA target, in the order of cfg.repa_targets (ACE-Step: mert, m-hubert)
        self.projectors = nn.ModuleList(
            nn.Sequential(
                nn.Linear(width, hidden),
                nn.SiLU(),
                nn.Linear(hidden, hidden),
                nn.SiLU(),
                nn.Linear(hidden, dim),
            )
            for dim in cfg.repa_targets.values()
        )
        # DiT-style init: output and AdaLN projections start at zero (each block starts near identity)
        for layer in (self.final_layer.linear, self.t_block[1]):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    @property
    def dtype(self) -> torch.dtype:
        return self.speaker_embedder.weight.dtype

    def encode_conditions(self, cond: Conditions) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1 + Lt + Ll, width) context and its mask, in the order [speaker, text, lyrics]."""
        dtype = self.dtype
        speaker = self.speaker_embedder(cond.speaker.to(dtype))[:, None]
        text = self.genre_embedder(cond.text.to(dtype))
        lyric_mask = cond.lyrics_mask.bool()
        lyrics = self.lyric_proj(self.lyric_encoder(self.lyric_embs(cond.lyrics), lyric_mask))
        speaker_mask = torch.ones(cond.batch_size, 1, dtype=torch.bool, device=speaker.device)
        context = torch.cat([speaker, text.to(speaker.dtype), lyrics.to(speaker.dtype)], dim=1)
        mask = torch.cat([speaker_mask, cond.text_mask.bool(), lyric_mask], dim=1)
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
        t = timestep.to(x.device).float().expand(x.shape[0]) * TIMESTEP_SCALE
        return self.denoise(x, t, cond, frame_mask, return_repa)

    def denoise(
        self,
        x: torch.Tensor,
        model_timestep: torch.Tensor,
        cond: Conditions,
        frame_mask: torch.Tensor | None = None,
        return_repa: bool = True,
    ) -> DiTOutput:
        """The forward pass with the timestep as the network sees it (sigma x 1000)."""
        batch, _, _, frames = x.shape
        if frame_mask is not None:
            frame_mask = frame_mask.bool()
        strict = frame_mask is not None and self.cfg.strict_padding
        tokens = self.proj_in(x.to(self.dtype), frame_mask if strict else None)
        if strict:
            tokens = tokens.masked_fill(~frame_mask[..., None], 0.0)
        features = timestep_features(
            model_timestep.float().expand(batch), self.cfg.timestep_freq_dim
        )
        time = self.timestep_embedder(features.to(tokens.dtype))
        time6 = self.t_block(time).view(batch, 6, -1)
        context, context_mask = self.encode_conditions(cond)
        rope = rope_angles(frames, self.cfg.head_dim, self.cfg.rope_theta, device=x.device)
        context_rope = rope_angles(
            context.shape[1], self.cfg.head_dim, self.cfg.rope_theta, device=x.device
        )
        repa: dict[str, torch.Tensor] = {}
        h = tokens
        for index, block in enumerate(self.transformer_blocks):
            args = (h, time6, rope, frame_mask, context, context_mask, context_rope)
            if self.cfg.gradient_checkpointing and self.training:
                h = checkpoint(block, *args, use_reentrant=False)
            else:
                h = block(*args)
            if return_repa and index + 1 == self.cfg.repa_block:
                repa = {
                    name: head(h)
                    for name, head in zip(self.cfg.repa_targets, self.projectors, strict=True)
                }
        sample = self.final_layer(h, time)
        if strict:
            sample = sample.masked_fill(~frame_mask[:, None, None, :], 0.0)
        return DiTOutput(sample=sample, repa=repa)
