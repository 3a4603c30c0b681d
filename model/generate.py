"""Text (+ lyrics) -> stereo waveform: condition encoders -> flow sampler -> DCAE decode -> vocoder."""

from __future__ import annotations

import math
from typing import Any

import torch
from songmill.model.conditions import Conditions
from songmill.model.dcae import MusicDCAE
from songmill.model.dit import LinearDiT
from songmill.model.encoders import ByteLyricTokenizer, TextEncoder, tokenize_lyrics
from songmill.model.flow import SAMPLERS, SamplerSettings, sample
from songmill.model.mel import Vocoder, mel_frames


def build_conditions(
    text_encoder: TextEncoder,
    prompt: str,
    lyrics: str | None,
    max_lyric_tokens: int,
    lyric_tokenizer: Any = None,
    speaker: torch.Tensor | None = None,
    speaker_dim: int = 512,
    device: torch.device | str = "cpu",
) -> Conditions:
    """One-sample Conditions; no lyrics -> a single pad id (the same as a dropped lyric)."""
    text, text_mask = text_encoder([prompt])
    if lyrics:
        ids = tokenize_lyrics(lyric_tokenizer or ByteLyricTokenizer(), lyrics, max_lyric_tokens)
    else:
        ids = [0]
    lyric_ids = torch.tensor([ids], dtype=torch.long)
    speaker_vec = (
        torch.zeros(1, speaker_dim) if speaker is None else speaker.reshape(1, speaker_dim)
    )
    return Conditions(
        text=text,
        text_mask=text_mask,
        lyrics=lyric_ids,
        lyrics_mask=torch.ones_like(lyric_ids, dtype=torch.bool),
        speaker=speaker_vec.float(),
    ).to(device)


def sampler_settings(
    sampler: str | SamplerSettings = "acestep",
    steps: int | None = None,
    guidance_scale: float | None = None,
    shift: float | None = None,
    **overrides: object,
) -> SamplerSettings:
    """A named sampler ("acestep": ACE-Step v1's Euler 60 + APG 15, guidance interval 0.5;
    "euler" / "heun": plain CFG) or given settings, with the non-None overrides applied."""
    if isinstance(sampler, str):
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; choose one of {sorted(SAMPLERS)}")
        sampler = SAMPLERS[sampler]
    values = {"steps": steps, "guidance_scale": guidance_scale, "shift": shift, **overrides}
    settings = sampler.replace(**{k: v for k, v in values.items() if v is not None})
    settings.validate()
    return settings


@torch.no_grad()
def generate(
    dcae: MusicDCAE,
    dit: LinearDiT,
    text_encoder: TextEncoder,
    vocoder: Vocoder,
    prompt: str,
    lyrics: str | None,
    duration_s: float,
    seed: int,
    steps: int | None = None,
    guidance_scale: float | None = None,
    lyric_tokenizer: Any = None,
    sampler: str | SamplerSettings = "acestep",
    shift: float | None = None,
    speaker: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int]:
    """Returns ((2, T) float32 waveform on CPU, sample rate). Same seed -> same waveform.

    `sampler`: a name from model.flow.SAMPLERS or SamplerSettings; `steps`, `guidance_scale` and
    `shift` override its values when given."""
    settings = sampler_settings(sampler, steps, guidance_scale, shift)
    device = next(dit.parameters()).device
    num_samples = int(round(duration_s * vocoder.sample_rate))
    # enough mel frames that the vocoder's (frames - 1) * hop samples cover the duration
    frames = mel_frames(num_samples + vocoder.hop_length - 1, vocoder.hop_length)
    latent_frames = math.ceil(frames / dcae.factor)
    cond = build_conditions(
        text_encoder,
        prompt,
        lyrics,
        dit.cfg.lyrics.max_tokens,
        lyric_tokenizer,
        speaker,
        dit.cfg.speaker_dim,
        device,
    )
    # noise drawn on CPU so a seed gives the same start on every device
    generator = torch.Generator(device="cpu").manual_seed(seed)
    shape = (1, dit.cfg.in_channels, dit.cfg.latent_height, latent_frames)
    noise = torch.randn(shape, generator=generator).to(device)
    was_training = dit.training
    dit.eval()
    latent = sample(dit, noise, cond, settings)
    dit.train(was_training)
    mel = dcae.decode(latent.to(next(dcae.parameters()).device))[..., :frames].clamp(-1.0, 1.0)
    wav = vocoder(mel.float())[0, :, :num_samples]
    return wav.float().cpu().contiguous(), int(vocoder.sample_rate)
