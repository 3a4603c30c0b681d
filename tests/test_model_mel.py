"""Mel front end, Griffin-Lim inverse, vocoder loading."""

from __future__ import annotations

import math

import pytest
import torch
from songmill.model.config import MelConfig
from songmill.model.mel import (
    GriffinLimVocoder,
    MelSpectrogram,
    Vocoder,
    griffin_lim,
    load_vocoder,
    mel_frames,
)
from songmill.model.vocoder import HiFiGANConfig, HiFiGANGenerator, HiFiGANVocoder
from songmill.model.weights import save_module

SR = 44100


def _music_like(seconds: float, seed: int = 0) -> torch.Tensor:
    """Stereo chord with vibrato and a decaying envelope plus a little noise: (1, 2, T)."""
    generator = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * SR)) / SR
    envelope = torch.exp(-((t % 0.5) * 4.0))
    left = sum(
        torch.sin(2 * math.pi * f * t + 0.3 * torch.sin(2 * math.pi * 5 * t))
        for f in (220, 277, 330, 880)
    )
    right = sum(torch.sin(2 * math.pi * f * t) for f in (110, 330, 660))
    wav = torch.stack([left * envelope, right * envelope]) * 0.15
    return (wav + 0.01 * torch.randn(wav.shape, generator=generator)).unsqueeze(0)


def test_mel_shape_range_and_frame_rate():
    front = MelSpectrogram()
    wav = _music_like(1.0)
    mel = front(wav)
    assert mel.shape == (1, 2, 128, mel_frames(wav.shape[-1]))
    # ACE-Step's framing: (win - hop) / 2 reflect padding each side, no centring -> T // hop frames
    assert mel.shape[-1] == wav.shape[-1] // 512
    assert MelConfig().frames_per_second == pytest.approx(86.13, abs=0.01)
    # (x + 11) / 14 then Normalize(0.5, 0.5), no clamp: a loud tone can go past 1
    assert mel.min() > -1.0 and mel.max() < 1.5
    loud = front(torch.sin(torch.arange(8192) * 0.2).expand(1, 2, -1) * 30.0)
    assert loud.max() > 1.0
    # silence: magnitude sqrt(1e-6) (the release's epsilon), not the 1e-5 floor
    silence = front(torch.zeros(1, 2, 4096))
    expected = ((torch.log(front.mel_basis.sum(dim=1) * 1e-3) + 11.0) / 14.0 - 0.5) / 0.5
    assert torch.allclose(silence[0, 0, :, 0], expected, atol=1e-5)


def test_centered_framing_option_clamps_to_minus_one():
    cfg = MelConfig(framing="centered", log_min=math.log(1e-5), clamp=True)
    front = MelSpectrogram(cfg)
    wav = _music_like(1.0)
    assert front(wav).shape[-1] == wav.shape[-1] // 512 + 1 == mel_frames(wav.shape[-1], cfg=cfg)
    assert torch.all(front(torch.zeros(1, 2, 4096)) == -1.0)


def test_torch_slaney_filterbank_matches_librosa():
    import librosa
    from songmill.model.mel import torch_slaney_filterbank

    cfg = MelConfig()
    ours = torch_slaney_filterbank(cfg)
    theirs = torch.from_numpy(
        librosa.filters.mel(
            sr=44100, n_fft=2048, n_mels=128, fmin=40.0, fmax=16000.0, htk=False, norm="slaney"
        )
    )
    assert ours.shape == theirs.shape == (128, 1025)
    # fp32 (torchaudio's way) against librosa's fp64: equal to a few parts per million of the peak
    assert torch.allclose(ours, theirs, atol=1e-5 * float(theirs.max()))


def test_mel_filterbank_is_slaney_40_to_16k():
    front = MelSpectrogram()
    basis = front.mel_basis
    freqs = torch.linspace(0, SR / 2, basis.shape[1])
    used = freqs[basis.sum(dim=0) > 0]
    assert used.min() >= 40.0 - SR / 2048 and used.max() <= 16000.0 + SR / 2048
    # Slaney norm: each triangle has unit area in Hz, so low (narrow) bands have taller peaks
    assert basis[0].max() > basis[-1].max()


def test_channels_are_independent():
    front = MelSpectrogram()
    wav = _music_like(0.5)
    swapped = front(wav.flip(1))
    assert torch.allclose(front(wav).flip(1), swapped)


def test_mel_griffin_lim_mel_round_trip_is_close():
    front = MelSpectrogram()
    mel = front(_music_like(1.0))
    wav = griffin_lim(mel, n_iter=32)
    assert wav.shape == (1, 2, mel.shape[-1] * 512)
    again = front(wav)
    error = (again - mel).abs().mean().item()
    assert error < 0.03, error  # random phase alone (no iterations) gives ~0.1
    # and it is not trivially close: a random waveform's mel is far
    assert (front(torch.randn_like(wav) * 0.1) - mel).abs().mean() > 4 * error


def test_load_vocoder_none_is_griffin_lim():
    vocoder = load_vocoder(None)
    assert isinstance(vocoder, GriffinLimVocoder) and isinstance(vocoder, Vocoder)
    mel = torch.full((1, 2, 128, 5), -1.0)
    assert vocoder(mel).shape == (1, 2, 5 * 512)


def _tiny_hifigan() -> HiFiGANGenerator:
    cfg = HiFiGANConfig(
        initial_channels=16,
        upsample_rates=(8, 8, 8),
        upsample_kernels=(16, 16, 16),
        resblock_kernels=(3,),
        resblock_dilations=((1, 3),),
    )
    torch.manual_seed(0)
    return HiFiGANGenerator(cfg)


def test_hifigan_vocoder_saved_and_loaded(tmp_path):
    generator = _tiny_hifigan()
    save_module(generator, generator.cfg.to_dict(), tmp_path, "vocoder")
    vocoder = load_vocoder(tmp_path)
    assert isinstance(vocoder, HiFiGANVocoder) and isinstance(vocoder, Vocoder)
    mel = MelSpectrogram()(_music_like(0.2))
    wav = vocoder(mel)
    assert wav.shape == (1, 2, (mel.shape[-1] - 1) * 512)
    with torch.no_grad():
        direct = generator.eval()(mel[0, :1])[0, 0, : wav.shape[-1]]
    assert torch.allclose(wav[0, 0], direct, atol=1e-5)


def test_missing_vocoder_weights_say_what_is_missing(tmp_path):
    from songmill.model.weights import WeightsMissing

    with pytest.raises(WeightsMissing, match="vocoder.safetensors"):
        load_vocoder(tmp_path / "nowhere")
