"""Beat This backend: the real network class, saved with random weights, through the real loaders."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from songmill.annotate import music_beat_this as bt
from songmill.annotate.base import StageUnavailable, Track
from songmill.annotate.music import MusicConfig, MusicStage
from songmill.model.weights import WeightsMissing

pytest.importorskip("beat_this")

# A small BeatThis (the published one has transformer_dim 512, 6 layers): same code, seconds to run.
TINY = {
    "spect_dim": 128,
    "transformer_dim": 32,
    "ff_mult": 2,
    "n_layers": 1,
    "head_dim": 16,
    "stem_dim": 16,
    "dropout": {"frontend": 0.0, "transformer": 0.0},
    "sum_head": True,
    "partial_transformers": True,
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny networks run far faster on one thread than on a shared machine's contended two."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    """A Lightning-format checkpoint as the authors publish it, converted by the real converter."""
    folder = tmp_path_factory.mktemp("beat_this")
    torch.manual_seed(0)
    model = bt.model_from_config(TINY)
    checkpoint = {
        "hyper_parameters": {**TINY, "lr": 8e-4, "weight_decay": 0.01},  # the trainer's keys too
        "state_dict": {"model." + k: v for k, v in model.state_dict().items()},
    }
    torch.save(checkpoint, folder / "final0.ckpt")
    bt.convert_checkpoint(folder / "final0.ckpt", folder / "weights")
    return folder, model.eval()


def test_converted_weights_reproduce_the_saved_network(weights_dir):
    folder, original = weights_dir
    loaded = bt.load_model(folder / "weights")
    assert isinstance(loaded, bt._model_class())
    spect = bt.log_mel(np.random.default_rng(0).standard_normal(22050 * 1).astype(np.float32) * 0.1)
    with torch.inference_mode():
        expected, got = original(spect.unsqueeze(0)), loaded(spect.unsqueeze(0))
    assert torch.allclose(expected["beat"], got["beat"]) and torch.allclose(
        expected["downbeat"], got["downbeat"]
    )
    # a differently seeded network gives other logits: the comparison above can fail
    torch.manual_seed(1)
    other = bt.model_from_config(TINY).eval()
    with torch.inference_mode():
        assert not torch.allclose(other(spect.unsqueeze(0))["beat"], got["beat"])


def test_front_end_matches_the_published_parameters():
    seconds = 4.0
    tone = np.sin(2 * np.pi * 440.0 * np.arange(int(22050 * seconds)) / 22050).astype(np.float32)
    spect = bt.log_mel(tone)
    assert spect.shape == (int(seconds * bt.FPS) + 1, bt.N_MELS)  # 50 frames/s, centred frames
    # 440 Hz lands in one mel band near the slaney scale's position for it, not spread everywhere
    band = int(spect.mean(axis=0).argmax())
    import librosa

    centres = librosa.mel_frequencies(
        n_mels=bt.N_MELS + 2, fmin=bt.F_MIN, fmax=bt.F_MAX, htk=False
    )[1:-1]
    assert abs(centres[band] - 440.0) < 40.0


def test_mel_filters_equal_librosas_slaney_filters():
    import librosa

    reference = librosa.filters.mel(
        sr=bt.SAMPLE_RATE,
        n_fft=bt.N_FFT,
        n_mels=bt.N_MELS,
        fmin=bt.F_MIN,
        fmax=bt.F_MAX,
        htk=False,
        norm=None,
    )
    assert np.allclose(bt.mel_filters(), reference, atol=1e-5)


def test_long_tracks_are_chunked_and_stitched(weights_dir):
    folder, original = weights_dir
    chunk = 160  # the published 1500 frames work the same; short keeps the test fast
    spect = bt.log_mel(np.random.default_rng(2).standard_normal(22050 * 9).astype(np.float32) * 0.1)
    assert spect.shape[0] > 2 * chunk
    beat, downbeat = bt.frame_logits(original, spect, chunk_frames=chunk)
    assert beat.shape == (spect.shape[0],) and downbeat.shape == (spect.shape[0],)
    assert float(beat.min()) > -1000.0, "every frame is covered by a chunk"
    # frames inside the first chunk equal a direct run on that chunk (left border padded)
    with torch.inference_mode():
        direct = original(
            torch.nn.functional.pad(
                spect[: chunk - bt.BORDER_FRAMES], (0, 0, bt.BORDER_FRAMES, 0)
            ).unsqueeze(0)
        )
        tail = original(
            torch.nn.functional.pad(
                spect[-(chunk - bt.BORDER_FRAMES) :], (0, 0, 0, bt.BORDER_FRAMES)
            ).unsqueeze(0)
        )
    keep = slice(bt.BORDER_FRAMES, chunk - bt.BORDER_FRAMES)
    assert torch.allclose(beat[: keep.stop - keep.start], direct["beat"][0][keep], atol=1e-5)
    # the last chunk ends at the track's end (where chunks overlap, the earlier one is kept)
    assert torch.allclose(beat[-5:], tail["beat"][0][keep][-5:], atol=1e-5)


def test_missing_weights_say_what_to_do(tmp_path):
    with pytest.raises(WeightsMissing, match="beat_this"):
        bt.load_model(tmp_path)
    stage = MusicStage(MusicConfig(beat_backend="beat_this", beat_this_weights=str(tmp_path)))
    with pytest.raises(StageUnavailable, match="music_beat_this"):
        stage.setup()
    auto = MusicStage(MusicConfig(beat_backend="auto", beat_this_weights=str(tmp_path)))
    auto.setup()  # auto falls back to the default learned backend (or the DSP path without one)
    assert auto.learned_name != "beat_this"


def test_not_a_checkpoint_is_a_clear_error(tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "odd.ckpt")
    with pytest.raises(ValueError, match="not a Beat This Lightning checkpoint"):
        bt.convert_checkpoint(tmp_path / "odd.ckpt", tmp_path / "out")


def test_stage_uses_beat_this_for_beats_and_downbeats(weights_dir, tmp_path):
    folder, _ = weights_dir
    from songmill.testaudio.synth import render_track

    audio = render_track(120, "D", "major", 12.0, seed=3, style="pop")
    sf.write(str(tmp_path / "t.wav"), audio, 44100)
    track = Track({"track_id": "t", "uri": str(tmp_path / "t.wav"), "duration_s": 12.0})
    stage = MusicStage(
        MusicConfig(
            beat_backend="beat_this", beat_this_weights=str(folder / "weights"), neural="always"
        )
    )
    stage.setup()
    assert stage.learned_name == "beat_this"
    [row] = stage.process([track])
    assert not isinstance(row, BaseException), row
    beats, downbeats = stage.learned.tracker(track.audio(22050, mono=True)[0])
    assert [e["estimator"] for e in row["bpm_estimates"]] == ["dsp", "percival", "beat_this"]
    if beats.shape[0] >= 4:  # random weights: whatever it found is what the row holds
        assert row["beat_source"] == "beat_this"
        if (
            abs(row["bpm"] - row["bpm_estimates"][2]["bpm"]) <= 0.04 * row["bpm"]
        ):  # same metrical level
            assert row["beats"] == pytest.approx(list(beats), abs=1e-4)
            assert row["downbeats"] == pytest.approx(list(downbeats), abs=1e-4)
    assert row["keyscale"] == "D major"  # key still comes from the DSP path
