"""ACE-Step v1's music vocoder: ADaMoS HiFi-GAN, a ConvNeXt encoder in front of a HiFi-GAN head.

(N, 128, F) natural-log mel (model.mel.log_mel) -> (N, 1, F * 512) waveform in [-1, 1]. Module
and parameter names follow the release (`backbone.stages.i.j.dwconv`, `head.ups.i.weight_g`...),
weight-normalised convolutions keep their (weight_g, weight_v) pair, so the release's
`music_vocoder` weights load key for key. Stereo is vocoded one channel at a time, as ACE-Step does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from songmill.model.config import HOP_LENGTH, SAMPLE_RATE, MelConfig, _DictConfig, unscale_mel
from torch import nn


@dataclass
class ADaMoSConfig(_DictConfig):
    """The release's config.json fields (ADaMoSHiFiGANV1), with its defaults."""

    input_channels: int = 128
    depths: tuple[int, ...] = (3, 3, 9, 3)
    dims: tuple[int, ...] = (128, 256, 384, 512)
    drop_path_rate: float = 0.0
    kernel_sizes: tuple[int, ...] = (7,)
    upsample_rates: tuple[int, ...] = (4, 4, 2, 2, 2, 2, 2)
    upsample_kernel_sizes: tuple[int, ...] = (8, 8, 4, 4, 4, 4, 4)
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11, 13)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = (
        (1, 3, 5),
        (1, 3, 5),
        (1, 3, 5),
        (1, 3, 5),
    )
    num_mels: int = 512
    upsample_initial_channel: int = 1024
    use_template: bool = False
    pre_conv_kernel_size: int = 13
    post_conv_kernel_size: int = 13
    sampling_rate: int = SAMPLE_RATE
    n_fft: int = 2048
    win_length: int = 2048
    hop_length: int = HOP_LENGTH
    f_min: int = 40
    f_max: int = 16000
    n_mels: int = 128

    def mel_config(self) -> MelConfig:
        return MelConfig(
            sample_rate=self.sampling_rate,
            n_fft=self.n_fft,
            win_length=self.win_length,
            hop_length=self.hop_length,
            n_mels=self.n_mels,
            f_min=float(self.f_min),
            f_max=float(self.f_max),
        )


class _WeightNorm:
    """w = g * v / ||v|| (norm over every axis but 0), with the (weight_g, weight_v) parameters
    torch.nn.utils.weight_norm names; computed with the same kernel it uses."""

    def _split_weight(self) -> None:
        weight = self.weight.detach()  # type: ignore[attr-defined]
        del self.weight  # type: ignore[attr-defined]
        self.weight_g = nn.Parameter(torch.norm_except_dim(weight, 2, 0))
        self.weight_v = nn.Parameter(weight.clone())

    def normed_weight(self) -> torch.Tensor:
        return torch._weight_norm(self.weight_v, self.weight_g, 0)


class WNConv1d(nn.Conv1d, _WeightNorm):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._split_weight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.normed_weight(), self.bias)


class WNConvTranspose1d(nn.ConvTranspose1d, _WeightNorm):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._split_weight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose1d(
            x,
            self.normed_weight(),
            self.bias,
            self.stride,
            self.padding,
            self.output_padding,
            self.groups,
            self.dilation,
        )


class ChannelsFirstLayerNorm(nn.Module):
    """LayerNorm over axis 1 of (N, C, L), written out as the release computes it."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        return self.weight[:, None] * ((x - mean) / torch.sqrt(var + self.eps)) + self.bias[:, None]


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int, kernel: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel, padding=(kernel - 1) // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, int(mlp_ratio * dim))
        self.pwconv2 = nn.Linear(int(mlp_ratio * dim), dim)
        self.gamma = nn.Parameter(1e-6 * torch.ones(dim))

    def forward(self, x: torch.Tensor, residual: bool = True) -> torch.Tensor:
        h = self.norm(self.dwconv(x).permute(0, 2, 1))
        h = (self.gamma * self.pwconv2(F.gelu(self.pwconv1(h)))).permute(0, 2, 1)
        return x + h if residual else h


class ParallelConvNeXtBlock(nn.Module):
    def __init__(self, dim: int, kernels: tuple[int, ...]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(ConvNeXtBlock(dim, k) for k in kernels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + sum(block(x, residual=False) for block in self.blocks)


class ConvNeXtEncoder(nn.Module):
    def __init__(self, cfg: ADaMoSConfig) -> None:
        super().__init__()
        dims = cfg.dims
        stem = nn.Sequential(
            nn.Conv1d(cfg.input_channels, dims[0], 7, padding=3, padding_mode="replicate"),
            ChannelsFirstLayerNorm(dims[0]),
        )
        self.channel_layers = nn.ModuleList([stem])
        for i in range(len(dims) - 1):
            self.channel_layers.append(
                nn.Sequential(ChannelsFirstLayerNorm(dims[i]), nn.Conv1d(dims[i], dims[i + 1], 1))
            )

        def block(dim: int) -> nn.Module:
            if len(cfg.kernel_sizes) == 1:
                return ConvNeXtBlock(dim, cfg.kernel_sizes[0])
            return ParallelConvNeXtBlock(dim, tuple(cfg.kernel_sizes))

        self.stages = nn.ModuleList(
            nn.Sequential(*(block(dim) for _ in range(depth)))
            for dim, depth in zip(dims, cfg.depths, strict=True)
        )
        self.norm = ChannelsFirstLayerNorm(dims[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for channel_layer, stage in zip(self.channel_layers, self.stages, strict=True):
            x = stage(channel_layer(x))
        return self.norm(x)


class ResBlock1(nn.Module):
    def __init__(self, channels: int, kernel: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            WNConv1d(channels, channels, kernel, dilation=d, padding=(kernel * d - d) // 2)
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            WNConv1d(channels, channels, kernel, padding=(kernel - 1) // 2) for _ in dilations
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for first, second in zip(self.convs1, self.convs2, strict=True):
            x = x + second(F.silu(first(F.silu(x))))
        return x


class HiFiGANHead(nn.Module):
    def __init__(self, cfg: ADaMoSConfig) -> None:
        super().__init__()
        if math.prod(cfg.upsample_rates) != cfg.hop_length:
            raise ValueError(
                f"upsample_rates multiply to {math.prod(cfg.upsample_rates)}, not hop_length {cfg.hop_length}"
            )
        if cfg.use_template:
            raise ValueError(
                "use_template=True (noise templates) is not supported; the release has it off"
            )
        channels = cfg.upsample_initial_channel
        self.conv_pre = WNConv1d(
            cfg.num_mels,
            channels,
            cfg.pre_conv_kernel_size,
            padding=(cfg.pre_conv_kernel_size - 1) // 2,
        )
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        for i, (rate, kernel) in enumerate(
            zip(cfg.upsample_rates, cfg.upsample_kernel_sizes, strict=True)
        ):
            cin, cout = channels // 2**i, channels // 2 ** (i + 1)
            self.ups.append(
                WNConvTranspose1d(cin, cout, kernel, rate, padding=(kernel - rate) // 2)
            )
            for k, d in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes, strict=True):
                self.resblocks.append(ResBlock1(cout, k, tuple(d)))
        self.kernels = len(cfg.resblock_kernel_sizes)
        self.conv_post = WNConv1d(
            cout, 1, cfg.post_conv_kernel_size, padding=(cfg.post_conv_kernel_size - 1) // 2
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_pre(x)
        for i, up in enumerate(self.ups):
            x = up(F.silu(x))
            blocks = self.resblocks[i * self.kernels : (i + 1) * self.kernels]
            x = sum(block(x) for block in blocks) / self.kernels
        return torch.tanh(self.conv_post(F.silu(x)))


class ADaMoSHiFiGAN(nn.Module):
    """(N, n_mels, F) log mel -> (N, 1, F * hop) waveform."""

    config_class = ADaMoSConfig

    def __init__(self, cfg: ADaMoSConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = ConvNeXtEncoder(cfg)
        self.head = HiFiGANHead(cfg)

    def forward(self, log_mel: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(log_mel))


class ADaMoSVocoder:
    """Vocoder protocol around the release's vocoder: scaled (B, C, n_mels, F) mel, as the DCAE
    decodes it, -> (B, C, F * hop) waveform (unscaled to log mel first)."""

    NAME = "vocoder"

    def __init__(self, generator: ADaMoSHiFiGAN, mel_cfg: MelConfig | None = None) -> None:
        self.generator = generator.eval().requires_grad_(False)
        self.mel_cfg = mel_cfg or generator.cfg.mel_config()
        self.sample_rate = generator.cfg.sampling_rate
        self.hop_length = generator.cfg.hop_length

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> ADaMoSVocoder:
        from songmill.model.weights import load_module

        return cls(load_module(ADaMoSHiFiGAN, Path(path), cls.NAME, device=device))  # type: ignore[arg-type]

    @torch.no_grad()
    def __call__(self, mel: torch.Tensor) -> torch.Tensor:
        batch, channels, n_mels, frames = mel.shape
        log_mel = unscale_mel(mel, self.mel_cfg)
        device = next(self.generator.parameters()).device
        wav = torch.cat(
            [self.generator(log_mel[:, c].to(device).float()) for c in range(channels)], dim=1
        )  # one channel at a time, as the release decodes
        return wav.reshape(batch, channels, -1)
