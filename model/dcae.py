"""Music DCAE: a deep-compression autoencoder (Sana's DC-AE, as ACE-Step adapts it) for mel images.

(B, 2, 128, F) scaled stereo mel -> (B, 8, 16, F/8) latent (f8c8): every down step halves both
axes; residual space-to-channel shortcuts surround every down / up step (pixel-unshuffle + channel
averaging down, channel duplication + pixel-shuffle up), so each step only learns a residual.
ResBlocks in the first three stages and EfficientViT blocks (multiscale ReLU linear attention +
gated depthwise conv) in the last, as ACE-Step v1's release; module names follow diffusers'
AutoencoderDC, so the release's weights load key for key. The latent is normalised with a
stored shift and scale (default: ACE-Step's fixed (z + 1.9091) x 0.1786).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from songmill.model.config import DCAEConfig
from songmill.model.layers import ChannelRMSNorm
from torch import nn


def pad_to_multiple(mel: torch.Tensor, multiple: int = 8, value: float = -1.0) -> torch.Tensor:
    """Right-pad the last (frame) axis to a multiple of `multiple`; -1 is silence in mel scale."""
    frames = mel.shape[-1]
    missing = (-frames) % multiple
    if missing == 0:
        return mel
    return F.pad(mel, (0, missing), value=value)


class ResBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm = ChannelRMSNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.norm(self.conv2(F.silu(self.conv1(x))))


class MultiscaleProjection(nn.Module):
    """The "multiscale" copy of q, k, v: depthwise k x k conv, then a 1x1 conv grouped per head."""

    def __init__(self, channels: int, heads: int, kernel: int) -> None:
        super().__init__()
        self.proj_in = nn.Conv2d(
            3 * channels, 3 * channels, kernel, padding=kernel // 2, groups=3 * channels, bias=False
        )
        self.proj_out = nn.Conv2d(3 * channels, 3 * channels, 1, groups=3 * heads, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_out(self.proj_in(x))


class MultiscaleLinearAttention(nn.Module):
    """EfficientViT / Sana multiscale ReLU linear attention over the H*W positions of an image
    (diffusers' SanaMultiscaleLinearAttention, which the release's DCAE uses), with residual.

    q, k, v come from per-pixel projections plus a multiscale copy; groups of 3 x head_dim
    channels form the heads; attention is ReLU(q) (ReLU(k)^T v) / ReLU(q) sum ReLU(k) in fp32.
    Images with no more positions than head_dim take the quadratic form, as diffusers does.
    """

    def __init__(self, channels: int, head_dim: int, kernel: int, eps: float = 1e-15) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.heads = channels // head_dim
        self.eps = eps
        self.to_q = nn.Linear(channels, channels, bias=False)
        self.to_k = nn.Linear(channels, channels, bias=False)
        self.to_v = nn.Linear(channels, channels, bias=False)
        self.to_qkv_multiscale = nn.ModuleList([MultiscaleProjection(channels, self.heads, kernel)])
        self.to_out = nn.Linear(2 * channels, channels, bias=False)
        self.norm_out = ChannelRMSNorm(channels)

    def _attend(self, qkv: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = qkv.shape
        linear = height * width > self.head_dim
        if linear:
            qkv = qkv.float()
        q, k, v = qkv.reshape(batch, -1, 3 * self.head_dim, height * width).chunk(
            3, dim=2
        )  # (B, heads, d, N)
        q, k = F.relu(q), F.relu(k)
        if linear:
            v = F.pad(v, (0, 0, 0, 1), value=1.0)  # ones row -> normaliser in the last row
            out = torch.matmul(
                torch.matmul(v, k.transpose(-1, -2)), q
            ).float()  # (B, heads, d+1, N)
            out = out[:, :, :-1] / (out[:, :, -1:] + self.eps)
        else:
            scores = torch.matmul(k.transpose(-1, -2), q).float()
            scores = scores / (scores.sum(dim=2, keepdim=True) + self.eps)
            out = torch.matmul(v, scores.to(v.dtype))
        return out.reshape(batch, -1, height, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixels = x.movedim(1, -1)
        qkv = torch.cat([self.to_q(pixels), self.to_k(pixels), self.to_v(pixels)], dim=-1).movedim(
            -1, 1
        )
        multiscale = torch.cat([qkv, *(branch(qkv) for branch in self.to_qkv_multiscale)], dim=1)
        out = self._attend(multiscale).to(x.dtype)
        return x + self.norm_out(self.to_out(out.movedim(1, -1)).movedim(-1, 1))


class GLUMBConv(nn.Module):
    """1x1 expand -> SiLU -> depthwise 3x3 -> SiLU gate -> 1x1 project -> RMSNorm, residual."""

    def __init__(self, channels: int, expand: int) -> None:
        super().__init__()
        hidden = channels * expand
        self.conv_inverted = nn.Conv2d(channels, 2 * hidden, 1)
        self.conv_depth = nn.Conv2d(2 * hidden, 2 * hidden, 3, padding=1, groups=2 * hidden)
        self.conv_point = nn.Conv2d(hidden, channels, 1, bias=False)
        self.norm = ChannelRMSNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_depth(F.silu(self.conv_inverted(x)))
        h, gate = h.chunk(2, dim=1)
        return x + self.norm(self.conv_point(h * F.silu(gate)))


class EfficientViTBlock(nn.Module):
    def __init__(self, channels: int, head_dim: int, kernel: int, expand: int) -> None:
        super().__init__()
        self.attn = MultiscaleLinearAttention(channels, head_dim, kernel)
        self.conv_out = GLUMBConv(channels, expand)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.attn(x))


class DownStep(nn.Module):
    """Stride-2 conv plus the space-to-channel shortcut: pixel-unshuffle, average channel groups."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)
        self.group_size = in_channels * 4 // out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = F.pixel_unshuffle(x, 2).unflatten(1, (-1, self.group_size)).mean(dim=2)
        return self.conv(x) + shortcut


class UpStep(nn.Module):
    """Nearest upsample + conv plus the channel-to-space shortcut: duplicate channels, pixel-shuffle."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.repeats = out_channels * 4 // in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = F.pixel_shuffle(x.repeat_interleave(self.repeats, dim=1), 2)
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest")) + shortcut


def _stage_blocks(cfg: DCAEConfig, stage: int, depth: int) -> list[nn.Module]:
    width = cfg.widths[stage]
    if cfg.block_types[stage] == "res":
        return [ResBlock(width) for _ in range(depth)]
    if cfg.block_types[stage] == "vit":
        return [
            EfficientViTBlock(
                width, cfg.attention_head_dim, cfg.qkv_multiscale_kernel, cfg.ffn_expand
            )
            for _ in range(depth)
        ]
    raise ValueError(f"unknown DCAE block type {cfg.block_types[stage]!r}")


class Encoder(nn.Module):
    """diffusers' AutoencoderDC encoder layout (conv_in, down_blocks.i.j, conv_out)."""

    def __init__(self, cfg: DCAEConfig) -> None:
        super().__init__()
        widths = cfg.widths
        self.conv_in = nn.Conv2d(cfg.in_channels, widths[0], 3, padding=1)
        stages = []
        for i, depth in enumerate(cfg.encoder_depths):
            blocks = _stage_blocks(cfg, i, depth)
            if i < len(widths) - 1:
                blocks.append(DownStep(widths[i], widths[i + 1]))
            stages.append(nn.Sequential(*blocks))
        self.down_blocks = nn.ModuleList(stages)
        self.conv_out = nn.Conv2d(widths[-1], cfg.latent_channels, 3, padding=1)
        self.out_group = widths[-1] // cfg.latent_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for stage in self.down_blocks:
            x = stage(x)
        return self.conv_out(x) + x.unflatten(1, (-1, self.out_group)).mean(dim=2)


class Decoder(nn.Module):
    """diffusers' AutoencoderDC decoder layout (up_blocks.i is stage i, run deepest first)."""

    def __init__(self, cfg: DCAEConfig) -> None:
        super().__init__()
        widths = cfg.widths
        self.conv_in = nn.Conv2d(cfg.latent_channels, widths[-1], 3, padding=1)
        self.in_repeats = widths[-1] // cfg.latent_channels
        stages = []
        for i in range(len(widths)):
            blocks: list[nn.Module] = []
            if i < len(widths) - 1:
                blocks.append(UpStep(widths[i + 1], widths[i]))
            blocks += _stage_blocks(cfg, i, cfg.decoder_depths[i])
            stages.append(nn.Sequential(*blocks))
        self.up_blocks = nn.ModuleList(stages)
        self.norm_out = ChannelRMSNorm(widths[0])
        self.conv_out = nn.Conv2d(widths[0], cfg.in_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(z) + z.repeat_interleave(self.in_repeats, dim=1)
        for stage in reversed(self.up_blocks):
            x = stage(x)
        return self.conv_out(F.relu(self.norm_out(x)))


class MusicDCAE(nn.Module):
    """f8c8 mel autoencoder. `encode` returns the normalised latent, `decode` takes it back."""

    config_class = DCAEConfig

    def __init__(self, cfg: DCAEConfig) -> None:
        super().__init__()
        if any(w % cfg.latent_channels for w in cfg.widths[-1:]) or len(cfg.widths) != 4:
            raise ValueError(
                "DCAE expects 4 stages (f8) and a last width divisible by latent channels"
            )
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        # latent = (z - shift) * scale; stored with the weights, set from data by set_latent_stats
        self.register_buffer("latent_shift", torch.tensor(float(cfg.latent_shift)))
        self.register_buffer("latent_scale", torch.tensor(float(cfg.latent_scale)))

    @property
    def factor(self) -> int:
        return self.cfg.downsample_factor

    def latent_frames(self, mel_frames: int) -> int:
        return math.ceil(mel_frames / self.factor)

    def encode_raw(self, mel: torch.Tensor) -> torch.Tensor:
        return self.encoder(pad_to_multiple(mel, self.factor))

    def encode(self, mel: torch.Tensor) -> torch.Tensor:
        """(B, 2, 128, F) -> (B, 8, 16, ceil(F / 8)) scaled and shifted latent."""
        return (self.encode_raw(mel) - self.latent_shift) * self.latent_scale

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """(B, 8, 16, L) -> (B, 2, 128, 8 L) mel."""
        return self.decoder(latent / self.latent_scale + self.latent_shift)

    def forward(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        latent = self.encode(mel)
        return self.decode(latent)[..., : mel.shape[-1]], latent

    @torch.no_grad()
    def set_latent_stats(self, raw_latents: torch.Tensor) -> tuple[float, float]:
        """Set shift / scale so that encoded latents of this sample have mean 0 and std 1."""
        shift = raw_latents.float().mean()
        scale = 1.0 / raw_latents.float().std().clamp_min(1e-6)
        self.latent_shift.fill_(shift)
        self.latent_scale.fill_(scale)
        return float(shift), float(scale)
