"""The training half of `songmill demo`: tiny DCAE -> cached features -> tiny DiT -> a sample.

Runs on CPU in a couple of minutes for a few hundred steps. No pretrained weights exist here,
so the features use the tiny preset's randomly initialised text encoder and leave out the
MERT / mHuBERT REPA targets and the speaker vector (each needs its checkpoint).
"""

from __future__ import annotations

import os
import time
from typing import Any


def train_demo(manifest_path: str, out_dir: str, steps: int, seed: int = 0) -> dict[str, Any]:
    """Returns the paths it wrote and the first / last losses of both runs."""
    import torch

    os.makedirs(out_dir, exist_ok=True)
    # The tiny models gain little from more threads, and lose a lot when the cores are shared.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_demo(manifest_path, out_dir, steps, seed)
    finally:
        torch.set_num_threads(threads)


def _train_demo(manifest_path: str, out_dir: str, steps: int, seed: int) -> dict[str, Any]:
    from songmill.train.config import TrainConfig
    from songmill.train.export import generate_from_checkpoint
    from songmill.train.loop import train
    from songmill.train.prepare import cache_features

    started = time.perf_counter()
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[name] = round(now - clock, 1)
        clock = now

    common = dict(
        preset="tiny",
        seed=seed,
        max_steps=steps,
        warmup_steps=max(1, steps // 20),
        lr=2e-3,
        ema_decay=0.99,
        ckpt_every=steps,
        val_every=steps,
        val_duration_s=4.0,
        val_steps=8,
        progress=False,
        log_every=max(1, steps // 10),
    )
    dcae_dir = os.path.join(out_dir, "dcae")
    dcae = train(
        TrainConfig(kind="dcae", batch_size=4, max_crop_s=1.0, **common), manifest_path, dcae_dir
    )
    lap("dcae")
    features_manifest = cache_features(
        manifest_path,
        os.path.join(out_dir, "features_corpus"),
        os.path.join(out_dir, "manifest_features.parquet"),
        dcae_checkpoint=dcae_dir,
        text_encoder="tiny-random",
        mert="none",
        mhubert="none",
        speaker="none",
    )
    lap("features")
    dit_dir = os.path.join(out_dir, "dit")
    dit = train(
        TrainConfig(kind="dit", batch_size=8, max_crop_s=10.0, repa_weight=0.0, **common),
        features_manifest,
        dit_dir,
    )
    lap("dit")
    sample = generate_from_checkpoint(
        dit_dir,
        "120 bpm, C major",
        None,
        8.0,
        os.path.join(out_dir, "sample.wav"),
        seed=seed,
        steps=16,
        guidance=3.0,
    )
    lap("generate")
    return {
        "dcae_run": dcae_dir,
        "dcae_loss": f"{dcae.losses[0]:.4f} -> {dcae.losses[-1]:.4f}",
        "features_manifest": features_manifest,
        "dit_run": dit_dir,
        "dit_loss": f"{dit.losses[0]:.4f} -> {dit.losses[-1]:.4f}",
        "sample_wav": sample,
        "seconds": round(time.perf_counter() - started, 1),
        "seconds_per_phase": seconds,
    }
