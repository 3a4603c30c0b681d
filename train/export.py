"""From a DiT checkpoint to audio and to a merged export.

A checkpoint dir holds the DiT (`dit.safetensors`, `dit_ema.safetensors`) or, for a LoRA run,
only `dit_lora.safetensors` plus the base checkpoint's path; `trainer.json` carries the
conditioning (text encoder, lyric tokenizer, DCAE path) generation needs.
"""

from __future__ import annotations

import json
import os
import shutil

import torch
from songmill.train.checkpoint import TRAINER_FILE, resolve_checkpoint, save_weights
from torch import nn


def load_dit(
    checkpoint: str, device: str | torch.device = "cpu", prefer_ema: bool = True
) -> tuple[nn.Module, dict]:
    """The DiT of a checkpoint (EMA weights when present; LoRA adapters merged in) and its
    trainer record."""
    from songmill.model.dit import LinearDiT
    from songmill.model.weights import load_module

    path = resolve_checkpoint(checkpoint)
    with open(os.path.join(path, TRAINER_FILE)) as f:
        trainer = json.load(f)
    if trainer.get("lora"):
        from songmill.train.lora import load_adapter, merge_lora

        with open(os.path.join(path, "dit_lora.json")) as f:
            spec = json.load(f)
        base, _ = load_dit(spec["base_checkpoint"], "cpu", prefer_ema)
        dit = merge_lora(load_adapter(base, path))
        return dit.to(device).eval(), trainer
    name = (
        "dit_ema"
        if prefer_ema and os.path.exists(os.path.join(path, "dit_ema.safetensors"))
        else "dit"
    )
    return load_module(LinearDiT, path, name, device=device).eval(), trainer


def merge_lora_checkpoint(checkpoint: str, out_dir: str) -> str:
    """A plain DiT checkpoint (dit.safetensors + dit.json + trainer.json) with the adapters folded in."""
    path = resolve_checkpoint(checkpoint)
    dit, trainer = load_dit(path)
    os.makedirs(out_dir, exist_ok=True)
    save_weights(os.path.join(out_dir, "dit.safetensors"), dit.state_dict())
    with open(os.path.join(out_dir, "dit.json"), "w") as f:
        json.dump(dit.cfg.to_dict(), f, indent=2, sort_keys=True)
    record = {**trainer, "lora": False, "merged_from": path}
    with open(os.path.join(out_dir, TRAINER_FILE), "w") as f:
        json.dump(record, f, indent=2, sort_keys=True)
    shutil.copy(os.path.join(path, "dit_lora.json"), os.path.join(out_dir, "merged_lora.json"))
    return out_dir


def generate_from_checkpoint(
    checkpoint: str,
    prompt: str,
    lyrics: str | None,
    duration_s: float,
    out: str,
    seed: int = 0,
    steps: int | None = None,
    guidance: float | None = None,
    sampler: str = "acestep",
    dcae: str | None = None,
    vocoder: str | None = None,
    device: str = "auto",
    guidance_type: str | None = None,
    guidance_interval: float | None = None,
    omega: float | None = None,
) -> str:
    """Generate from a checkpoint with a named sampler (see model.flow.SAMPLERS); `steps`,
    `guidance` (the scale), `guidance_type` (apg | cfg), `guidance_interval` and `omega` change
    it when not None."""
    from songmill.model.config import MelConfig
    from songmill.model.generate import generate, sampler_settings
    from songmill.model.mel import load_vocoder
    from songmill.train.dist import pick_device
    from songmill.train.samples import write_wav
    from songmill.train.tasks import load_conditioning, uncond_lyric_mask

    dev = pick_device(device)
    dit, trainer = load_dit(checkpoint, dev)
    conditioning = trainer.get("conditioning", {})
    settings = sampler_settings(
        sampler,
        steps,
        guidance,
        float(conditioning.get("timestep_shift", 3.0)),
        guidance=guidance_type,
        guidance_interval=guidance_interval,
        omega=omega,
        uncond_lyric_mask=uncond_lyric_mask(conditioning),
    )
    parts = load_conditioning(conditioning, dev, dcae_override=dcae)
    if parts["dcae"] is None:
        raise FileNotFoundError(
            "no DCAE to decode with: pass --dcae DIR (a `songmill train dcae` run)"
        )
    mel_cfg = MelConfig.from_dict(conditioning["mel"]) if "mel" in conditioning else MelConfig()
    wav, sr = generate(
        parts["dcae"],
        dit,
        parts["text_encoder"],
        load_vocoder(vocoder or conditioning.get("vocoder") or None, mel_cfg, dev),
        prompt,
        lyrics,
        duration_s,
        seed,
        lyric_tokenizer=parts["tokenizer"],
        sampler=settings,
    )
    return write_wav(out, wav, sr)
