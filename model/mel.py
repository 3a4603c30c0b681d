"""Mel front end (waveform -> scaled log-mel "image") and its inverses (Griffin-Lim, vocoder).

44.1 kHz stereo; torch.stft with a 2048 Hann window, hop 512; magnitude through librosa's Slaney
mel filterbank (128 bands, 40 Hz - 16 kHz); log with a 1e-5 floor; mapped linearly onto [-1, 1].
No torchaudio.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from songmill.model.config import MelConfig
from torch import nn


def mel_filterbank(cfg: MelConfig) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) Slaney-normalised Slaney-scale filterbank."""
    import librosa

    return librosa.filters.mel(
        sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.f_min, fmax=cfg.f_max,
        htk=False, norm="slaney",
    ).astype(np.float32)


def mel_frames(num_samples: int, hop_length: int = 512) -> int:
    """Frames torch.stft(center=True) yields for `num_samples` samples."""
    return num_samples // hop_length + 1


class MelSpectrogram(nn.Module):
    """(B, C, T) waveform -> (B, C, n_mels, frames) log-mel scaled to [-1, 1]."""

    def __init__(self, cfg: MelConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or MelConfig()
        # derived constants, not weights: kept out of the state dict
        self.register_buffer("mel_basis", torch.from_numpy(mel_filterbank(self.cfg)), persistent=False)
        self.register_buffer("window", torch.hann_window(self.cfg.win_length), persistent=False)

    def mel_frames(self, num_samples: int) -> int:
        return mel_frames(num_samples, self.cfg.hop_length)

    def magnitude(self, wav: torch.Tensor) -> torch.Tensor:
        """(B, C, T) -> (B, C, n_fft//2+1, frames) STFT magnitude (fp32)."""
        batch, channels, samples = wav.shape
        spec = torch.stft(
            wav.reshape(batch * channels, samples).float(), n_fft=self.cfg.n_fft,
            hop_length=self.cfg.hop_length, win_length=self.cfg.win_length, window=self.window,
            center=True, pad_mode="reflect", return_complex=True,
        )
        return spec.abs().reshape(batch, channels, spec.shape[-2], spec.shape[-1])

    def scale(self, log_mel: torch.Tensor) -> torch.Tensor:
        lo, hi = self.cfg.log_min, self.cfg.log_max
        return ((log_mel - lo) / (hi - lo) * 2.0 - 1.0).clamp(-1.0, 1.0)

    def unscale(self, mel: torch.Tensor) -> torch.Tensor:
        lo, hi = self.cfg.log_min, self.cfg.log_max
        return (mel.float().clamp(-1.0, 1.0) + 1.0) / 2.0 * (hi - lo) + lo

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        if wav.dim() == 2:
            wav = wav.unsqueeze(0)
        mel = torch.matmul(self.mel_basis, self.magnitude(wav))
        return self.scale(torch.log(mel.clamp_min(self.cfg.log_floor)))


def _stft(x: torch.Tensor, cfg: MelConfig, window: torch.Tensor) -> torch.Tensor:
    return torch.stft(
        x, n_fft=cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.win_length, window=window,
        center=True, pad_mode="reflect", return_complex=True,
    )


def _istft(spec: torch.Tensor, cfg: MelConfig, window: torch.Tensor, length: int) -> torch.Tensor:
    return torch.istft(
        spec, n_fft=cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.win_length,
        window=window, center=True, length=length,
    )


@torch.no_grad()
def griffin_lim(
    mel: torch.Tensor,
    n_iter: int = 32,
    cfg: MelConfig | None = None,
    momentum: float = 0.99,
    seed: int = 0,
) -> torch.Tensor:
    """(B, C, n_mels, frames) scaled mel -> (B, C, (frames - 1) * hop) waveform.

    Mel -> linear magnitude through the filterbank's pseudo-inverse (clamped at zero), then fast
    Griffin-Lim (Perraudin et al. 2013, librosa's momentum form) from a seeded random phase.
    """
    cfg = cfg or MelConfig()
    front = MelSpectrogram(cfg).to(mel.device)
    batch, channels, n_mels, frames = mel.shape
    magnitude_mel = torch.exp(front.unscale(mel)).reshape(batch * channels, n_mels, frames)
    inverse_basis = torch.linalg.pinv(front.mel_basis)
    magnitude = torch.matmul(inverse_basis, magnitude_mel).clamp_min(0.0)
    length = (frames - 1) * cfg.hop_length
    generator = torch.Generator(device="cpu").manual_seed(seed)
    phase = torch.rand(magnitude.shape, generator=generator).to(mel.device) * (2 * math.pi)
    angles = torch.polar(torch.ones_like(magnitude), phase)
    previous = torch.zeros_like(angles)
    for _ in range(n_iter):
        rebuilt = _stft(_istft(magnitude * angles, cfg, front.window, length), cfg, front.window)
        angles = rebuilt - (momentum / (1.0 + momentum)) * previous
        angles = angles / (angles.abs() + 1e-16)
        previous = rebuilt
    wav = _istft(magnitude * angles, cfg, front.window, length)
    return wav.reshape(batch, channels, length)


@runtime_checkable
class Vocoder(Protocol):
    """Mel -> waveform. `__call__((B, C, n_mels, F)) -> (B, C, (F - 1) * hop_length)`."""

    sample_rate: int
    hop_length: int

    def __call__(self, mel: torch.Tensor) -> torch.Tensor: ...


class GriffinLimVocoder:
    """The fallback vocoder: no weights, phase estimated by Griffin-Lim."""

    def __init__(self, cfg: MelConfig | None = None, n_iter: int = 32) -> None:
        self.cfg = cfg or MelConfig()
        self.n_iter = n_iter
        self.sample_rate = self.cfg.sample_rate
        self.hop_length = self.cfg.hop_length

    def __call__(self, mel: torch.Tensor) -> torch.Tensor:
        return griffin_lim(mel, self.n_iter, self.cfg)


VOCODER_NAME = "vocoder"


def load_vocoder(
    path: str | Path | None, mel_cfg: MelConfig | None = None, device: str | torch.device = "cpu"
) -> Vocoder:
    """A pretrained HiFi-GAN-type vocoder from `path` (a directory holding `vocoder.safetensors`
    and `vocoder.json`, see model.vocoder), or Griffin-Lim when `path` is None."""
    if path is None:
        return GriffinLimVocoder(mel_cfg)
    from songmill.model.vocoder import HiFiGANVocoder

    return HiFiGANVocoder.load(path, device=device)
