"""Mel front end (waveform -> scaled log-mel "image") and its inverses (Griffin-Lim, vocoder).

44.1 kHz stereo, 2048 Hann window, hop 512, 128 Slaney bands over 40 Hz - 16 kHz, log with a 1e-5
floor, then mapped linearly onto [-1, 1]. The default framing is ACE-Step v1's music_log_mel
(see MelConfig.framing): `log_mel` is that transform, `MelSpectrogram` adds the DCAE's scaling.
No torchaudio: its Slaney filterbank is rebuilt here from the formulas.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from songmill.model.config import MelConfig, scale_log_mel, unscale_mel
from torch import nn

_SLANEY_F_SP = 200.0 / 3  # Hz per mel below 1 kHz
_SLANEY_MIN_LOG_HZ, _SLANEY_MIN_LOG_MEL = 1000.0, 15.0
_SLANEY_LOGSTEP = math.log(6.4) / 27.0


def _hz_to_slaney_mel(freq: float) -> float:
    if freq < _SLANEY_MIN_LOG_HZ:
        return freq / _SLANEY_F_SP
    return _SLANEY_MIN_LOG_MEL + math.log(freq / _SLANEY_MIN_LOG_HZ) / _SLANEY_LOGSTEP


def _slaney_mel_to_hz(mels: torch.Tensor) -> torch.Tensor:
    freqs = _SLANEY_F_SP * mels
    log_region = mels >= _SLANEY_MIN_LOG_MEL
    return torch.where(
        log_region,
        _SLANEY_MIN_LOG_HZ * torch.exp(_SLANEY_LOGSTEP * (mels - _SLANEY_MIN_LOG_MEL)),
        freqs,
    )


def torch_slaney_filterbank(cfg: MelConfig) -> torch.Tensor:
    """(n_mels, n_fft // 2 + 1) Slaney-scale, Slaney-normalised triangles computed in fp32 the
    way torchaudio.functional.melscale_fbanks does (what ACE-Step's MelScale uses)."""
    n_freqs = cfg.n_fft // 2 + 1
    all_freqs = torch.linspace(0, cfg.sample_rate // 2, n_freqs)
    m_pts = torch.linspace(
        _hz_to_slaney_mel(cfg.f_min), _hz_to_slaney_mel(cfg.f_max), cfg.n_mels + 2
    )
    f_pts = _slaney_mel_to_hz(m_pts)
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts[None, :] - all_freqs[:, None]
    down = (-1.0 * slopes[:, :-2]) / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    fb = torch.clamp(torch.min(down, up), min=0.0)
    fb = fb * (2.0 / (f_pts[2 : cfg.n_mels + 2] - f_pts[: cfg.n_mels]))[None, :]
    return fb.T.contiguous()


def mel_filterbank(cfg: MelConfig) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) Slaney-normalised Slaney-scale filterbank of the cfg's framing."""
    if cfg.framing == "acestep":
        return torch_slaney_filterbank(cfg).numpy()
    import librosa

    return librosa.filters.mel(
        sr=cfg.sample_rate,
        n_fft=cfg.n_fft,
        n_mels=cfg.n_mels,
        fmin=cfg.f_min,
        fmax=cfg.f_max,
        htk=False,
        norm="slaney",
    ).astype(np.float32)


def _acestep_padding(cfg: MelConfig) -> tuple[int, int]:
    return (cfg.win_length - cfg.hop_length) // 2, (cfg.win_length - cfg.hop_length + 1) // 2


def mel_frames(num_samples: int, hop_length: int = 512, cfg: MelConfig | None = None) -> int:
    """Frames the mel front end yields for `num_samples` samples (cfg's framing; default ACE-Step's)."""
    cfg = cfg or MelConfig(hop_length=hop_length)
    if cfg.framing == "centered":
        return num_samples // cfg.hop_length + 1
    left, right = _acestep_padding(cfg)
    return max(0, (num_samples + left + right - cfg.n_fft) // cfg.hop_length + 1)


class LogMel(nn.Module):
    """(..., T) waveform -> (..., n_mels, frames) natural-log mel, before any scaling.

    With the default framing this equals ACE-Step's `music_log_mel.LogMelSpectrogram`.
    """

    def __init__(self, cfg: MelConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or MelConfig()
        if self.cfg.framing not in ("acestep", "centered"):
            raise ValueError(
                f"unknown mel framing {self.cfg.framing!r}; expected 'acestep' or 'centered'"
            )
        # derived constants, not weights: kept out of the state dict
        self.register_buffer(
            "mel_basis", torch.from_numpy(mel_filterbank(self.cfg)), persistent=False
        )
        self.register_buffer("window", torch.hann_window(self.cfg.win_length), persistent=False)

    def magnitude(self, wav: torch.Tensor) -> torch.Tensor:
        """(..., T) -> (..., n_fft//2+1, frames) STFT magnitude (fp32)."""
        lead, samples = wav.shape[:-1], wav.shape[-1]
        flat = wav.reshape(-1, samples).float()
        centered = self.cfg.framing == "centered"
        if not centered:
            flat = torch.nn.functional.pad(
                flat[:, None], _acestep_padding(self.cfg), mode="reflect"
            )[:, 0]
        spec = torch.stft(
            flat,
            n_fft=self.cfg.n_fft,
            hop_length=self.cfg.hop_length,
            win_length=self.cfg.win_length,
            window=self.window,
            center=centered,
            pad_mode="reflect",
            return_complex=True,
        )
        if centered:
            magnitude = spec.abs()
        else:  # ACE-Step's "pow2_sqrt": the epsilon keeps the gradient finite at silence
            magnitude = torch.sqrt(torch.view_as_real(spec).pow(2).sum(-1) + 1e-6)
        return magnitude.reshape(*lead, magnitude.shape[-2], magnitude.shape[-1])

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        mel = torch.matmul(self.mel_basis, self.magnitude(wav))
        return torch.log(mel.clamp_min(self.cfg.log_floor))


def log_mel(audio: torch.Tensor, cfg: MelConfig | None = None) -> torch.Tensor:
    """ACE-Step's music_log_mel of (..., T) audio: (..., n_mels, frames) natural-log mel."""
    return LogMel(cfg).to(audio.device)(audio)


class MelSpectrogram(LogMel):
    """(B, C, T) waveform -> (B, C, n_mels, frames) log-mel scaled to [-1, 1] (the DCAE's input:
    ACE-Step's (x - min) / (max - min), then Normalize(0.5, 0.5))."""

    def mel_frames(self, num_samples: int) -> int:
        return mel_frames(num_samples, cfg=self.cfg)

    def scale(self, log_mel: torch.Tensor) -> torch.Tensor:
        return scale_log_mel(log_mel, self.cfg)

    def unscale(self, mel: torch.Tensor) -> torch.Tensor:
        return unscale_mel(mel, self.cfg)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        if wav.dim() == 2:
            wav = wav.unsqueeze(0)
        return self.scale(super().forward(wav))


def _stft(x: torch.Tensor, cfg: MelConfig, window: torch.Tensor) -> torch.Tensor:
    return torch.stft(
        x,
        n_fft=cfg.n_fft,
        hop_length=cfg.hop_length,
        win_length=cfg.win_length,
        window=window,
        center=True,
        pad_mode="reflect",
        return_complex=True,
    )


def _istft(spec: torch.Tensor, cfg: MelConfig, window: torch.Tensor, length: int) -> torch.Tensor:
    return torch.istft(
        spec,
        n_fft=cfg.n_fft,
        hop_length=cfg.hop_length,
        win_length=cfg.win_length,
        window=window,
        center=True,
        length=length,
    )


@torch.no_grad()
def griffin_lim(
    mel: torch.Tensor,
    n_iter: int = 32,
    cfg: MelConfig | None = None,
    momentum: float = 0.99,
    seed: int = 0,
) -> torch.Tensor:
    """(B, C, n_mels, frames) scaled mel -> (B, C, frames * hop) waveform ((frames - 1) * hop
    with the centered framing).

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
    if cfg.framing == "acestep":
        # ACE-Step's frame t is centred at t * hop + (n_fft / 2 - left padding), not t * hop:
        # shift by that and give frames * hop samples, the length its front end maps to `frames`
        shift = cfg.n_fft // 2 - _acestep_padding(cfg)[0]
        wav = torch.nn.functional.pad(wav, (shift, cfg.hop_length - shift))
    return wav.reshape(batch, channels, wav.shape[-1])


@runtime_checkable
class Vocoder(Protocol):
    """Mel -> waveform. `__call__((B, C, n_mels, F)) -> (B, C, about F * hop_length)` samples."""

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
    """The vocoder at `path`, or Griffin-Lim when `path` is None.

    `path` is a directory holding `vocoder.safetensors` + `vocoder.json`: ACE-Step's ADaMoS
    vocoder as `songmill model import-acestep` writes it, or a songmill HiFi-GAN V1 (told apart
    by the config).
    """
    if path is None:
        return GriffinLimVocoder(mel_cfg)
    import json

    from songmill.model.adamos import ADaMoSVocoder
    from songmill.model.vocoder import HiFiGANVocoder

    directory = Path(path)
    directory = directory.parent if directory.suffix == ".safetensors" else directory
    if (directory / "config.json").exists() and not (directory / "vocoder.json").exists():
        raise ValueError(
            f"{directory} is a release music_vocoder directory: convert it once with "
            "`songmill model import-acestep RELEASE_DIR --out DIR` and pass DIR/vocoder"
        )
    config_file = directory / "vocoder.json"
    if config_file.exists() and "dims" in json.loads(config_file.read_text()):
        return ADaMoSVocoder.load(directory, device=device)
    return HiFiGANVocoder.load(directory, device=device)
