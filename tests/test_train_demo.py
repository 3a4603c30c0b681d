"""The training half of `songmill demo` on a tiny manifest: both runs, features, a sample wav."""

from __future__ import annotations

import os

import soundfile as sf
from songmill.train.demo import train_demo
from songmill.train.prepare import synthetic_manifest


def test_train_demo_trains_both_networks_and_writes_a_sample(tmp_path):
    manifest = synthetic_manifest(str(tmp_path / "data"), n_tracks=2, duration_s=2.0)
    result = train_demo(manifest, str(tmp_path / "train"), steps=2)
    info = sf.info(result["sample_wav"])
    assert info.samplerate == 44100 and info.channels == 2 and info.duration > 7.9
    for run in (result["dcae_run"], result["dit_run"]):
        assert os.path.exists(os.path.join(run, "checkpoints", "latest"))
        assert any(f.endswith(".wav") for f in os.listdir(os.path.join(run, "samples")))
    assert " -> " in result["dit_loss"] and set(result["seconds_per_phase"]) == {
        "dcae",
        "features",
        "dit",
        "generate",
    }
