"""BeatNetTracker's fast front end equals BeatNet's own: its LOG_SPECT features (madmom's
per-frame STFT) and its BDA network's forward pass, on the real weights from the BeatNet wheel."""

from __future__ import annotations

import numpy as np
import pytest
import soxr
from songmill.annotate import music_learned
from songmill.annotate.music import analysis_signal
from songmill.testaudio.synth import render_track

pytest.importorskip(
    "BeatNet", reason="BeatNet not installed (setup.sh installs it from requirements-nodeps.txt)"
)
torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tracker() -> music_learned.BeatNetTracker:
    return music_learned.BeatNetTracker((1, 2))


@pytest.fixture(scope="module")
def rock() -> np.ndarray:
    """10 s of the synthesiser's rock groove at 22050 Hz, cut to a length that is no multiple of
    the hop (the last frame reaches past the end)."""
    stereo = render_track(140, "D#", "major", 10.0, seed=4, style="rock")
    mono = analysis_signal(stereo, 44100)  # 11025 Hz mono, then up: any real-ish mono signal
    return soxr.resample(mono, 11025, 22050).astype(np.float32)[:-123]


def reference_features(tracker: music_learned.BeatNetTracker, y: np.ndarray) -> np.ndarray:
    """BeatNet's LOG_SPECT pipeline itself (madmom's processors, one FFT per frame)."""
    return np.ascontiguousarray(tracker.features.process_audio(y).T, dtype=np.float32)


def reference_activations(
    tracker: music_learned.BeatNetTracker, feats: np.ndarray, model: int
) -> np.ndarray:
    """BDA.forward from a zero state and its softmax, as BeatNet calls them."""
    network = tracker.models[model]
    with torch.no_grad():
        network.hidden = torch.zeros(2, 1, network.dim_hd)
        network.cell = torch.zeros(2, 1, network.dim_hd)
        probs = network.final_pred(network(torch.from_numpy(feats).unsqueeze(0))[0]).numpy()
    return probs[:2].T


@pytest.mark.parametrize("length", [None, 1000, 22050 * 2 + 441 * 3])
def test_features_equal_beatnets_log_spect(tracker, rock, length):
    y = rock if length is None else rock[:length]
    fast = tracker.spectrogram(y)
    expected = reference_features(tracker, y)
    assert fast.shape == expected.shape == (int(np.ceil(y.shape[0] / 441)), 272)
    np.testing.assert_array_equal(fast, expected)
    assert float(expected.max()) > 0.5  # a real spectrogram, not zeros against zeros


def test_network_activations_equal_bdas_forward(tracker, rock):
    feats = tracker.spectrogram(rock)
    for model in tracker.models:
        fast = tracker.model_activations(feats, model)
        expected = reference_activations(tracker, feats, model)
        assert fast.shape == expected.shape == (feats.shape[0], 2)
        np.testing.assert_allclose(fast, expected, atol=2e-5)
        assert float(expected[:, 0].max()) > 0.3  # the network finds beats here


def test_activations_do_not_depend_on_the_previous_track(tracker, rock):
    """BDA keeps its LSTM state between calls (made for streaming); every track starts afresh."""
    feats = tracker.spectrogram(rock)
    first = tracker.model_activations(feats, 1)
    tracker.model_activations(tracker.spectrogram(rock[::-1].copy()), 1)
    np.testing.assert_array_equal(tracker.model_activations(feats, 1), first)


def test_conv_rows_is_torchs_conv1d(tracker):
    x = torch.from_numpy(np.random.default_rng(1).random((37, 272), dtype=np.float32))
    conv = tracker.models[2].conv1
    with torch.no_grad():
        expected = conv(x.unsqueeze(1))
        np.testing.assert_allclose(
            music_learned.conv_rows(x, conv).numpy(), expected.numpy(), atol=1e-6
        )


def test_decoded_beats_equal_the_reference_paths(tracker, rock):
    feats = reference_features(tracker, rock)
    activations = sum(reference_activations(tracker, feats, m) for m in tracker.models) / 2
    expected = tracker.decode(activations)
    found = tracker(rock)
    assert found.bpm == pytest.approx(expected.bpm, abs=1e-3)
    assert found.bpm == pytest.approx(140, rel=0.04)
    np.testing.assert_allclose(found.beats, expected.beats, atol=1e-9)
