"""HiFi-GAN (V1-type) mel vocoder: the learned inverse of the mel front end.

ACE-Step ships a pretrained HiFi-GAN-type music vocoder; weights for this generator live in a
directory as `vocoder.safetensors` + `vocoder.json` (see model.weights). Each stereo channel is
vocoded independently, as a mono mel. Without weights, model.mel.GriffinLimVocoder is used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from songmill.model.config import HOP_LENGTH, SAMPLE_RATE, MelConfig, _DictConfig
from torch import nn
from torch.nn.utils import parametrizations


@dataclass
class HiFiGANConfig(_DictConfig):
    n_mels: int = 128
    sample_rate: int = SAMPLE_RATE
    hop_length: int = HOP_LENGTH
    initial_channels: int = 512
    upsample_rates: tuple[int, ...] = (8, 8, 2, 2, 2)
    upsample_kernels: tuple[int, ...] = (16, 16, 4, 4, 4)
    resblock_kernels: tuple[int, ...] = (3, 7, 11)
    resblock_dilations: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))


def _conv(cin: int, cout: int, kernel: int, dilation: int = 1) -> nn.Module:
    padding = (kernel * dilation - dilation) // 2
    return parametrizations.weight_norm(
        nn.Conv1d(cin, cout, kernel, dilation=dilation, padding=padding)
    )


class _MRFBlock(nn.Module):
    """HiFi-GAN ResBlock1: dilated conv pairs with leaky-ReLU, residual."""

    def __init__(self, channels: int, kernel: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.dilated = nn.ModuleList(_conv(channels, channels, kernel, d) for d in dilations)
        self.plain = nn.ModuleList(_conv(channels, channels, kernel) for _ in dilations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for dilated, plain in zip(self.dilated, self.plain, strict=True):
            x = x + plain(F.leaky_relu(dilated(F.leaky_relu(x, 0.1)), 0.1))
        return x


class HiFiGANGenerator(nn.Module):
    """(N, n_mels, F) mel -> (N, 1, F * hop) waveform in [-1, 1]."""

    config_class = HiFiGANConfig

    def __init__(self, cfg: HiFiGANConfig) -> None:
        super().__init__()
        if math.prod(cfg.upsample_rates) != cfg.hop_length:
            raise ValueError("the product of upsample_rates must equal hop_length")
        self.cfg = cfg
        self.conv_pre = _conv(cfg.n_mels, cfg.initial_channels, 7)
        self.ups = nn.ModuleList()
        self.mrfs = nn.ModuleList()
        channels = cfg.initial_channels
        for rate, kernel in zip(cfg.upsample_rates, cfg.upsample_kernels, strict=True):
            out_channels = channels // 2
            self.ups.append(
                parametrizations.weight_norm(
                    nn.ConvTranspose1d(
                        channels, out_channels, kernel, rate, padding=(kernel - rate) // 2
                    )
                )
            )
            self.mrfs.append(
                nn.ModuleList(
                    _MRFBlock(out_channels, k, tuple(d))
                    for k, d in zip(cfg.resblock_kernels, cfg.resblock_dilations, strict=True)
                )
            )
            channels = out_channels
        self.conv_post = _conv(channels, 1, 7)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = self.conv_pre(mel)
        for up, mrf in zip(self.ups, self.mrfs, strict=True):
            x = up(F.leaky_relu(x, 0.1))
            x = sum(block(x) for block in mrf) / len(mrf)
        return torch.tanh(self.conv_post(F.leaky_relu(x)))


class HiFiGANVocoder:
    """Vocoder protocol around a HiFiGANGenerator: (B, C, n_mels, F) -> (B, C, (F - 1) * hop)."""

    NAME = "vocoder"

    def __init__(self, generator: HiFiGANGenerator) -> None:
        self.generator = generator.eval().requires_grad_(False)
        self.sample_rate = generator.cfg.sample_rate
        self.hop_length = generator.cfg.hop_length

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> HiFiGANVocoder:
        from songmill.model.weights import load_module

        path = Path(path)
        directory = path.parent if path.suffix == ".safetensors" else path
        return cls(load_module(HiFiGANGenerator, directory, cls.NAME, device=device))  # type: ignore[arg-type]

    def mel_config(self) -> MelConfig:
        return MelConfig(
            sample_rate=self.sample_rate,
            hop_length=self.hop_length,
            n_mels=self.generator.cfg.n_mels,
        )

    @torch.no_grad()
    def __call__(self, mel: torch.Tensor) -> torch.Tensor:
        batch, channels, n_mels, frames = mel.shape
        device = next(self.generator.parameters()).device
        wav = self.generator(mel.reshape(batch * channels, n_mels, frames).to(device).float())
        length = (frames - 1) * self.hop_length
        return wav[:, 0, :length].reshape(batch, channels, length)
