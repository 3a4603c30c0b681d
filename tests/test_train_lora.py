"""LoRA on the DiT: only adapters train, they save and load alone, merging matches them."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file
from songmill.train.checkpoint import load_checkpoint
from songmill.train.config import TrainConfig
from songmill.train.loop import train
from songmill.train.prepare import cache_features, synthetic_manifest

QUIET = dict(
    progress=False,
    val_every=0,
    ckpt_every=0,
    log_every=1,
    batch_size=2,
    max_crop_s=2.0,
    warmup_steps=1,
)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    manifest = synthetic_manifest(str(root / "data"), n_tracks=2, duration_s=2.0)
    train(TrainConfig(kind="dcae", max_steps=1, **QUIET), manifest, str(root / "dcae"))
    features = cache_features(
        manifest,
        str(root / "corpus"),
        str(root / "m.parquet"),
        dcae_checkpoint=str(root / "dcae"),
        text_encoder="tiny-random",
        mert="none",
        mhubert="none",
        speaker="none",
    )
    base = train(TrainConfig(kind="dit", max_steps=2, **QUIET), features, str(root / "base"))
    lora_cfg = TrainConfig(
        kind="dit",
        max_steps=3,
        lora_rank=4,
        lora_alpha=8.0,
        base_checkpoint=str(root / "base"),
        lr=1e-2,
        **QUIET,
    )
    lora = train(lora_cfg, features, str(root / "lora"))
    return {"root": root, "features": features, "base": base, "lora": lora, "lora_cfg": lora_cfg}


def _inputs(dit):
    from songmill.model.conditions import Conditions

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 16, 12, generator=gen)
    cond = Conditions(
        torch.randn(2, 5, dit.cfg.text_dim, generator=gen),
        torch.ones(2, 5, dtype=torch.bool),
        torch.randint(1, 200, (2, 7), generator=gen),
        torch.ones(2, 7, dtype=torch.bool),
        torch.randn(2, dit.cfg.speaker_dim, generator=gen),
    )
    return x, torch.tensor([0.3, 0.8]), cond


def test_lora_checkpoint_holds_only_the_adapters(runs):
    ckpt = runs["lora"].checkpoint
    files = set(os.listdir(ckpt))
    assert "dit_lora.safetensors" in files and "dit.safetensors" not in files
    adapters = load_file(os.path.join(ckpt, "dit_lora.safetensors"))
    assert adapters and all("lora_" in k for k in adapters)
    base = load_file(os.path.join(runs["base"].checkpoint, "dit.safetensors"))
    assert sum(t.numel() for t in adapters.values()) < 0.5 * sum(t.numel() for t in base.values())
    assert any(float(t.abs().sum()) > 0 for k, t in adapters.items() if "lora_B" in k)  # trained


def test_adapters_load_alone_and_merge_to_the_same_function(runs):
    from songmill.train.export import load_dit
    from songmill.train.lora import load_adapter, merge_lora

    base, _ = load_dit(runs["base"].checkpoint)
    adapted = load_adapter(base, runs["lora"].checkpoint)
    x, t, cond = _inputs(adapted)
    with torch.no_grad():
        expected = adapted(x, t, cond).sample
        plain, _ = load_dit(runs["base"].checkpoint)
        assert not torch.allclose(plain(x, t, cond).sample, expected)  # the adapters do something
        merged = merge_lora(adapted)
        assert not any("lora" in n for n, _ in merged.named_modules())
        assert torch.allclose(merged(x, t, cond).sample, expected, atol=1e-5)


def test_lora_resume_and_merge_export(runs, tmp_path):
    from songmill.model.dit import LinearDiT
    from songmill.model.weights import load_module
    from songmill.train.export import merge_lora_checkpoint

    resumed = train(
        runs["lora_cfg"].updated({"max_steps": 4}),
        runs["features"],
        str(runs["root"] / "lora"),
        resume=str(runs["root"] / "lora"),
        force=True,
    )
    assert resumed.step == 4 and load_checkpoint(resumed.checkpoint).trainer["lora"] is True
    out = merge_lora_checkpoint(resumed.checkpoint, str(tmp_path / "merged"))
    dit = load_module(LinearDiT, out, "dit")
    assert isinstance(dit, LinearDiT)
