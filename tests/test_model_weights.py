"""Weights: safetensors + config JSON round trip, strict keys, no pickle; configs; model info CLI."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from songmill.model.config import DCAEConfig, DiTConfig, ModelPreset, preset
from songmill.model.dcae import MusicDCAE
from songmill.model.dit import LinearDiT
from songmill.model.weights import WeightsMismatch, load_module, save_module


@pytest.mark.parametrize("name", ["tiny", "small", "base"])
def test_presets_round_trip_through_json(name):
    cfg = preset(name)
    again = ModelPreset.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert again.dit.lyrics == again.lyrics
    assert DiTConfig.from_dict(cfg.dit.to_dict()) == cfg.dit


def test_unknown_config_keys_are_rejected():
    with pytest.raises(ValueError, match="unknown config keys"):
        DCAEConfig.from_dict({"widths": [1, 2, 3, 4], "depth": 3})


def test_save_load_is_bit_exact(tmp_path):
    cfg = preset("tiny")
    torch.manual_seed(0)
    dcae, dit = MusicDCAE(cfg.dcae), LinearDiT(cfg.dit)
    with torch.no_grad():
        dcae.set_latent_stats(torch.randn(100) * 3 + 1)
    save_module(dcae, cfg.dcae.to_dict(), tmp_path, "dcae")
    save_module(dit, cfg.dit.to_dict(), tmp_path, "dit")
    assert (tmp_path / "dit.safetensors").exists() and (tmp_path / "dit.json").exists()
    dcae2 = load_module(MusicDCAE, tmp_path, "dcae")
    dit2 = load_module(LinearDiT, tmp_path, "dit")
    for a, b in ((dcae, dcae2), (dit, dit2)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert dcae2.latent_shift.item() == dcae.latent_shift.item()
    mel = torch.rand(1, 2, 128, 16) * 2 - 1
    with torch.no_grad():
        assert torch.equal(dcae(mel)[0], dcae2(mel)[0])
    # a factory taking the config dict works too
    dit3 = load_module(lambda d: LinearDiT(DiTConfig.from_dict(d)), tmp_path, "dit")
    assert torch.equal(dit3.final_layer.linear.weight, dit.final_layer.linear.weight)


def test_strict_key_checks(tmp_path):
    cfg = preset("tiny")
    dcae = MusicDCAE(cfg.dcae)
    save_module(dcae, cfg.dcae.to_dict(), tmp_path, "dcae")
    # a config that builds a different architecture must not load silently
    wider = cfg.dcae.to_dict() | {"widths": [8, 16, 16, 64]}
    (tmp_path / "dcae.json").write_text(json.dumps(wider))
    with pytest.raises(WeightsMismatch, match="wrong shapes"):
        load_module(MusicDCAE, tmp_path, "dcae")
    deeper = cfg.dcae.to_dict() | {"encoder_depths": [2, 1, 1, 1]}
    (tmp_path / "dcae.json").write_text(json.dumps(deeper))
    with pytest.raises(WeightsMismatch, match="missing"):
        load_module(MusicDCAE, tmp_path, "dcae")
    # non-strict tolerates the missing block but still refuses wrong shapes
    assert isinstance(load_module(MusicDCAE, tmp_path, "dcae", strict=False), MusicDCAE)


def test_pickle_checkpoints_are_refused(tmp_path):
    cfg = preset("tiny")
    (tmp_path / "dcae.json").write_text(json.dumps(cfg.dcae.to_dict()))
    torch.save(MusicDCAE(cfg.dcae).state_dict(), tmp_path / "dcae.pt")
    with pytest.raises(ValueError, match="refusing to load pickle"):
        load_module(MusicDCAE, tmp_path, "dcae")


def test_missing_weights_raise_stage_unavailable(tmp_path):
    from songmill.model.weights import WeightsMissing

    with pytest.raises(WeightsMissing, match="dit.safetensors"):
        load_module(LinearDiT, tmp_path, "dit")


def test_model_info_counts_and_cli(capsys):
    from songmill.flows.commands.model_checkpoints import register
    from songmill.model.info import param_counts

    counts = param_counts("tiny")
    assert counts["total"] == sum(
        counts[p]["total"] for p in ("dcae", "dit", "text_encoder", "vocoder")
    )
    torch.manual_seed(0)
    real = sum(p.numel() for p in LinearDiT(preset("tiny").dit).parameters())
    assert counts["dit"]["total"] == real

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--corpus", default=None)
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"), common)
    args = parser.parse_args(["model", "info", "--preset", "base"])
    assert args.func(args) == 0
    printed = json.loads(capsys.readouterr().out)
    # ACE-Step v1 is ~3.5 B all told; the DiT alone is ~2.7 B
    assert 2.4e9 < printed["dit"]["total"] < 3.0e9
    assert printed["dit"]["per_block"] * 24 == printed["dit"]["blocks"]
