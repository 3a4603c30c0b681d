"""The `music` stage: tempo, beats, downbeats, metre, key and tuning, from one decode.

v7-v13, the tempo ensemble and the cascade (steps 2-5 below are v6's DSP path, now one estimator):

- Every track: the v6 DSP path (`dsp`, with its calibrated confidence) and essentia's
  PercivalBpmEstimator (`percival`, ~700x realtime at 11025 Hz).
- The learned backend (annotate/music_learned.py: BeatNet's CRNN, weights from its PyPI wheel,
  + madmom's DBN; or madmom's RNNs on opt-in; or Beat This when its weights are set) runs where
  `needs_learned` says: the DSP estimators disagree (not within 4 %) or the v6 confidence is
  below `neural_below_confidence` (`neural = auto`; `always`, `never`). Its beats and downbeats
  replace the DSP path's where it ran; v11 (`beat_choice = "agreement"`): its beats, each
  network's own and the DSP path's, moved to the chosen tempo, go to a committee, and the
  sequence the others agree with most (mean beat F) is the row's (`beat_source` names it;
  downbeats then from the DSP metre step). v8: BeatNet's trainings averaged (`beatnet`), and each
  one also votes with its own tempo (`beatnet1..3`, madmom's beat-only DBN). v9: trainings 2
  and 3 (the fit's choice, a third less network time), and the learned backend on every track
  (`auto` = `always`: the DSP path's confidence is no guide on produced mixes, measured twice).
  v12: BeatNet's networks are causal (online trackers): a frame's beat probability sees only the
  past. The backend's activations pass through the beat refiner (`beatnet_refiner`;
  model/beat_refiner.py), a small bidirectional GRU over the networks' output and the onset
  evidence, fitted on the real-production train half, before madmom's DBN decodes them.
- `vote`: the pulse most estimators find (up to an octave or a third), then the level within it
  (v13: among the estimates an octave apart) with the most weight within 4 %, plus
  `octave_credit` of the weight an octave away (weights fitted on the real-production set,
  benchmarks/devset/build_lmms_devset.py), less `level_prior` per octave from 120 BPM. v10,
  `compound_level = "dotted"` (opt-in): where the DSP path and Percival agree on a beat that
  divides in three (`compound_pulse`), a choice at 1.5 or 3 times it (a jig followed at its
  quarter note, as BeatNet does) gives way to their dotted quarter; the default keeps the
  quarter note, the tempo DAWs and MIDI files state. The row records every estimate
  (`bpm_estimates`), `bpm_agreement` and `beat_source`; bpm_confidence is a logistic on (vote
  share, agreement, the learned backend's own confidence), slopes >= 0, fitted on the same rows.
- Why: on real productions the v6 prior and rules chose the wrong metrical level (a hand-tuned
  prior fitted on our General-MIDI renders); learned activations know the level of a produced
  mix. Measured (benchmarks/RESULTS.md, issue 19): v9's settings are fitted on three sources of
  real productions (25 LMMS and 7 Hydrogen demo songs, 28 OpenMSX MIDI songs by their composers;
  each also at 0.75x and 1.3x its tempo; excerpts and whole songs; 696 rows). Fitted on two
  sources and scored on the third (songs from other musicians and another program), the
  procedure scores acc1 0.776 on OpenMSX (v8 0.741, BeatNet alone 0.743-0.759, essentia's
  defaults 0.657), 0.751 on LMMS (v8, fitted there, 0.755; BeatNet 2,3 0.697; essentia 0.657)
  and 0.959 on Hydrogen (v8 0.837, Percival 0.918, essentia 0.837): never below a single
  estimator it contains. Short of the 0.92 target: the written tempo is often double or half
  the felt beat (drum & bass, reggaeton, the retimed songs), or 3:2 from it (shuffles written
  in 4/4), where every estimator agrees with itself and not with the header.

Pipeline (arrays in; essentia never decodes here, it cannot read Opus):

1. Mono at 11025 Hz (the runner decodes once per batch and shares the audio between stages).
2. Beats (annotate/tempo.py): six onset functions of one 512-sample STFT, essentia's Degara
   tracker on each, the sequence the others agree with most (essentia's multifeature method, at a
   quarter of its sample rate).
3. Metrical level: the tracked tempo x 1/3, 1/2, 2/3, 1, 3/2, 2 or 3, whichever scores best on
   the onset functions' periodicity (autocorrelation comb at the candidate period) plus a
   log-normal tempo prior; the prior's centre and width and the evidence weight are fitted on the
   training half of the development set (benchmarks/devset), never on its test half.
   A backbeat one level down (kick and snare taking turns on about equally strong positions
   between and on the beats) doubles the level: the trackers followed half time. Without such a
   groove, a beat split in two whose music repeats as strongly at 1.5 beats is 6/8 tracked at
   the quarter note: the beat becomes the dotted quarter, on the best of three grid phases.
   The BPM is the period within 5 % of the beats' own whose onset autocorrelation comb (1, 2, 4
   periods) is strongest: a tracked sequence measures the stretch it locked onto, and with a
   drifting tempo that was 4-6 % off the mean (v5; alt_* train acc1 0.74 -> 0.87, dev train
   unchanged; span 3 / 5 / 7 % and comb lags compared there).
4. Metre: beats divided in three (onsets at the thirds of the beat) or two, and bars of two,
   three or four beats (kick-band accents and harmonic change per beat); 4/4, 3/4, 6/8, 12/8
   (and 9/8); downbeats at the bar phase with the strongest accents.
5. Beat This (annotate/music_beat_this.py) replaces steps 2-4's beats and downbeats when
   `beat_backend` asks for it and its weights are present.
6. Key (annotate/key.py): two chromas of the same 186 ms frames, referenced to the measured
   tuning: the stage's HPCP (36 bins, 8 harmonics) and KeyExtractor's (12 bins, 4 harmonics,
   Hann window). Each is correlated with the 24 keys of three essentia profiles (bgate,
   temperley2005, noland), and a conditional logit over the 24 keys weighs the six
   correlations and, from v6, KeyExtractor's chroma's natural seventh (for each minor key, its
   subtonic's weight minus its leading tone's: minor without the harmonic minor's raised
   seventh, which temperley2005's minor profile expects); seven weights fitted by maximum
   likelihood on the pooled train halves (benchmarks/devset/fit_key_model.py).
   v10: the key is the majority of three: that model's key, KeyExtractor's chroma with bgate,
   and essentia KeyExtractor with temperley2005 (93 ms frames on the analysis signal, ~2000x
   realtime); the model's key where all three differ. Chosen on the real productions' train
   half (bench_key_real.py; the figures in annotate/key.py, at KEY_METHODS).
7. Confidences: bpm_confidence = P(tempo within 4 %), a logistic calibration on (tracker
   agreement, level-score margin, periodicity) fitted on the development set's training half;
   key_confidence = the key model's probability of the key chosen.

Chosen by measurement on the development set's training half (67 of 160 excerpts; split by a
hash of the piece name): the prior (centre 120 BPM, width 1.0 in log units, evidence weight 2,
bonus 0.5 for the trackers' own level; one point of a flat optimum of a 480-point grid, acc1
0.94 on train); the dotted-quarter rule's thresholds (train acc1 0.94 -> 0.96); the key chroma
and profile (v3: HPCP at 11025 Hz, 2048-sample frames, 8 harmonics, 40 Hz - 3.5 kHz, summed
unnormalised, the 'bgate' profile: 0.90 exact on train against 0.84 for v2's 1024-sample
plain HPCP with 'noland'; 7 chroma variants x 14 profiles, a vote of 3-7 profiles (0.88), a
chord-template Viterbi with a chord-histogram key (0.70), profiles learned on train
(leave-one-out 0.85) and bass-chroma relative-key disambiguation (the bass favours the wrong
tonic in the relative-key misses) scored lower). v4: the KeyExtractor-chroma fallback and its
ratio, and key_confidence's calibration, on the pooled train halves of the development set and
its alt_* subsets (105 excerpts; benchmarks/devset/compare_keys.py --alt): key exact / MIREX
0.90 / 0.93 against 0.86 / 0.90 for v3's chroma alone and 0.80 / 0.89 for KeyExtractor at
44.1 kHz (KeyExtractor's chroma keys the same at 11, 22 or 44 kHz with 93 ms frames; a weighted
sum of the two chromas, 0.86, and choosing by the parts' self-agreement, 0.86-0.87, scored
lower). v5: the key model (benchmarks/devset/fit_key_model.py: features and L2 penalty chosen by
leave-one-piece-out on the pooled train halves, 105 excerpts of 103 pieces: 0.90 / 0.93 against
0.89 / 0.92 for v4's rule under the same leave-one-out; both chromas with bgate alone 0.85,
KeyExtractor's chroma with the three profiles 0.89, the stage chroma with them 0.87; a bass
chroma (40-260 Hz) at the tonic, the opening's and the ending's bass or chroma at the tonic,
the chroma's third and a minor-mode bias, each added to the two bgate correlations, moved it
from 0.85 to 0.85-0.86, and shaath instead of noland (0.85) or six profiles with krumhansl,
edma and shaath (0.88) scored lower), the BPM refinement (above), and the Degara tracker's
random draws seeded (the same excerpt gave other beats depending on the tracks analysed before
it in the process: the bench's per-subset figures moved by an excerpt with the order). v6: the
natural seventh of KeyExtractor's chroma (annotate/key.py: natural_seventh) added to the key
model, chosen by the same leave-one-piece-out (exact / MIREX 0.90 / 0.94, 95 of 105, against
0.90 / 0.93, 94 of 105, for v5's six features; L2 0.01, tied with 0.03 and 0.1): one excerpt on
train, so weak evidence. Tried in the same way and not adopted (leave-one-out 0.88-0.90, none
above v5): a bass chroma (40-260 Hz, no harmonics, from the stage's spectral peaks) correlated
with the three profiles, its tonic, tonic minus dominant and the share of frames whose bass is
the tonic; the leading tone in both modes; the tonic triad's and the dominant (major V) triad's
share of frame-wise triad matches and their mean template correlation; the third; a minor bias;
both chromas' natural sevenths; and the bass at the tonic over the excerpt's last 15 % (a cue of
how the set labels keys, not of keys: the excerpts do not reach the pieces' endings, and it got
no weight).
`benchmarks/bench_music_accuracy.py --devset DIR --split test` (one run, both paths):

    held-out test halves                acc1  acc2  beatF  key   MIREX  x realtime / core (CPU)
    dev (93)  essentia multif. + KeyExtr. 0.76  0.91  0.79   0.68  0.78    82x
              this stage (v4)             0.92  0.98  0.87   0.75  0.82
              this stage (v5)             0.95  0.98  0.86   0.77  0.84   217x (3.5-min tracks: 162x; v4 161x)
              this stage (v6)             0.95  0.98  0.86   0.80  0.85   227x (3.5-min tracks: 174x)
              (v6 run: essentia 76x, its other figures as above; v5 re-measured in a run
              beside it: 0.77 / 0.84, 219x, 3.5-min tracks 172x; v6's key is 74 of 93,
              0.796, MIREX 0.854: still just short of the 0.80 exact target)
    alt_* (34; other soundfonts, drifting tempo, reverb, noise; v3 never tuned on them):
              essentia multif. + KeyExtr. 0.76  0.91  0.77   0.74  0.82
              this stage (v4)             0.85  0.88  0.85   0.82  0.88
              this stage (v5)             0.91  0.94  0.85   0.88  0.92
              this stage (v6)             0.91  0.94  0.85   0.88  0.92
    train halves (what v5 and v6 were fitted on; --split train):
    dev (67)  essentia multif. + KeyExtr. 0.66  0.87  0.75   0.81  0.89
              this stage (v5)             0.97  1.00  0.88   0.87  0.91
              this stage (v6)             0.97  1.00  0.88   0.90  0.94
    alt_* (38) essentia multif. + KeyExtr. 0.79  0.92  0.69   0.82  0.89
              this stage (v5)             0.87  0.95  0.76   0.95  0.96
              this stage (v6)             0.87  0.95  0.76   0.92  0.94

key_confidence (v5, the model's probability) on the test halves: Brier 0.131 on dev (a constant
rate: 0.175; v4's: 0.204), 0.101 on alt_* (constant 0.104); share right per bin on dev 0.29,
0.53, 0.69, 0.94, 0.91 from [0, 0.5) to [0.95, 1] (the top two bins alike). v6: Brier 0.130 on
dev (constant 0.163), 0.093 on alt_* (constant 0.104); per bin on dev 0.20, 0.62, 0.75, 0.92,
0.93.

Weak: key on ambiguous relative keys and fifths (jigs in E minor that dwell on G major:
compound_12-8 key 0.40 on test, essentia 0.20) and short of the 0.80 / 0.85 targets on the dev
test half (v5 0.77 / 0.84, v6 0.80 / 0.85 with 74 of 93 exact: 0.796; the natural seventh
that moved it was one excerpt on train LOO, so may not carry to real songs); v6 relative-key
misses on the dev test half: 13 of 19 misses (v5: 14 of 21), mostly minor pieces read as their
relative major; below essentia on alt_triple's tempo (0.80 vs 1.00: one drumless 3/4
excerpt at 86 BPM read at 173, an octave) and beats (F 0.85 vs 0.92), and alt_compound's beats
(F 0.42 vs 0.50); drumless 6/8 with a drifting tempo (alt_compound acc1 0.50, essentia 0.25);
metre of drumless 3/4 (0.62) and 6/8 vs 12/8 (a bar of two or four dotted quarters); downbeats
(F 0.46); key below essentia on the compound train half (v5 0.70 / 0.76 vs 0.80 / 0.86; v6 level
with it) and on the compound_12-8 train half (0.90 / 0.95 vs 1.00, v5 and v6);
bpm_confidence was fitted before the BPM refinement (slightly under-confident now);
and the set itself: rendered MIDI, not recordings.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
from songmill.annotate import tempo
from songmill.annotate.audio import to_mono_resampled
from songmill.annotate.base import Stage, StageConfig, StageUnavailable, Track
from songmill.annotate.key import PITCH_CLASSES, KeyConfig, sharp_name, tuning_and_key
from songmill.annotate.tempo import ANALYSIS_SR, ODF_RATE, TempoConfig

__all__ = [
    "ANALYSIS_SR",
    "PITCH_CLASSES",
    "MusicConfig",
    "MusicStage",
    "analyse",
    "analysis_signal",
    "sharp_name",
]

MIN_ANALYSIS_S = 1.0
# Onset functions whose periodicity decides the metrical level.
LEVEL_ODFS = ("superflux", "complex", "low", "high")
# Logistic calibration of bpm_confidence on (max-agreement bits, level-score margin, periodicity
# at the chosen period), fitted on the development set's training half.
BPM_CONFIDENCE_COEF = (-1.626, 2.052, 0.705, -2.182)


@dataclass
class MusicConfig(StageConfig):
    min_bpm: float = 40.0
    max_bpm: float = 220.0
    # Fitted on the development set's training half (see the module docstring).
    prior_bpm: float = 120.0
    prior_width: float = 1.0
    salience_weight: float = 2.0
    keep_bonus: float = 0.5
    # Double the beat when, one level down, positions are about even in strength (alternation
    # below `backbeat_even_strength`) while kick and snare take turns on them by
    # `backbeat_contrast` more than the strength alternates: a backbeat the trackers halved.
    backbeat_even_strength: float = 0.45
    backbeat_contrast: float = 0.0
    # Bars of three beats need this much more explained accent variance than bars of two or four.
    triple_margin: float = 0.05
    # Beats divide in three when onsets at a third of the beat beat those halfway by this much.
    compound_threshold: float = 0.1
    # Compound metres with a beat slower than this are written 12/8 (slow shuffles), else 6/8.
    twelve_eight_below_bpm: float = 80.0
    # The level reported for a compound metre (6/8, 12/8): "quarter", the ensemble's choice as it
    # stands (BeatNet follows a 6/8 at its quarter note, the tempo a DAW or a MIDI file states:
    # they count quarter notes, as the real-production sets' labels do), or "dotted", the felt
    # dotted-quarter beat where both DSP estimators agree on a beat divided in three
    # (compound_pulse; the renders' labels: their jigs 0.30 -> 0.75 acc1).
    compound_level: str = "quarter"
    # A beat divided in two whose periodicity at 1.5 beats is at least `dotted_ratio` of that at
    # the beat, with onsets halfway stronger than at the thirds by `dotted_halves` (relative to the
    # beat's own): a compound metre tracked at the quarter note (the hemiola of 6/8). The beat
    # becomes the dotted quarter (2/3 of the tracked rate).
    dotted_ratio: float = 0.9
    dotted_halves: float = 0.65
    # ... unless kick and snare take turns one level down by this much (a drum groove: the
    # generated pop, rock, edm and drum & bass tracks are at 0.17 or more, drumless jigs below 0.08).
    dotted_max_kick_snare: float = 0.1
    # The reported BPM: the period within this share of the beats' own whose onset
    # autocorrelation is strongest (a drifting tempo; 0: the beats' period).
    period_refine_span: float = 0.05
    key_profile: str = "bgate"
    key_frame: int = 2048
    key_harmonics: int = 8
    # "vote" (v10): the majority of the key model, KeyExtractor's chroma with bgate and essentia
    # KeyExtractor with temperley2005, the model's key where all differ (annotate/key.py);
    # "model": the key model over the stage's and KeyExtractor's chromas;
    # "chroma": the stage chroma and `key_profile` alone.
    key_method: str = "vote"
    # "dsp": the DSP estimators alone (as neural = never); "beat_this": Beat This is the learned
    # backend (unavailable without weights); "auto": Beat This when `beat_this_weights` holds its
    # weights, else `learned_backend`.
    beat_backend: str = "auto"
    beat_this_weights: str = ""
    # The learned backend of the cascade: "beatnet" (weights in its PyPI wheel, CC BY 4.0) or
    # "madmom" (madmom's RNNs: CC BY-NC-SA 4.0 models, only with `madmom_models_licence` set to
    # exactly "CC BY-NC-SA 4.0").
    learned_backend: str = "beatnet"
    # BeatNet's trainings whose activations are averaged (comma-separated, of 1, 2, 3), chosen on
    # the real-production set (v9: 2,3 in each leave-one-source-out fit)
    beatnet_models: str = "2,3"
    # each of those networks also votes with its own tempo (more independent votes on the pulse;
    # madmom's beat-only DBN per network, a tenth of the downbeat decode)
    beatnet_separate_votes: bool = True
    # v12: the backend's activations pass through the beat refiner (model/beat_refiner.py: a
    # bidirectional GRU over the networks' output and the onset evidence, fitted on the
    # real-production train half; it reads trainings 2 and 3). false: the networks' mean (v11).
    beatnet_refiner: bool = True
    # Where the beats come from: "agreement" (v11): of the learned backend's beats, each
    # network's own (its vote's beats) and the DSP path's, each moved to the chosen tempo, the
    # sequence the others agree with most (tempo.most_agreed); "learned": the backend's (v7-v10).
    beat_choice: str = "agreement"
    # Which estimates the vote's level step chooses among: "octaves" (v13): every estimate at the
    # pulse step's winner or an octave from it; "largest_family" (v6-v12): only the estimates
    # whose own family is the largest, where one stray estimate a third away (x3, x1/3) can
    # leave a lone DSP half-time reading as the only candidate. Held out, acc1 v12 -> v13:
    # recorded songs (Frets on Fire) 0.792 -> 0.875, real test half 0.824 -> 0.832, renders
    # 0.792 both; the train half 0.776 -> 0.773 (one excerpt).
    level_among: str = "octaves"
    madmom_models_licence: str = ""
    # auto: the learned backend where the DSP estimators disagree or the stage's confidence is
    # below `neural_below_confidence`; always: on every track; never: DSP only.
    neural: str = "auto"
    # Fitted on the real-production development set (benchmarks/bench_music_accuracy.py
    # --fit-by-source, every row of LMMS, Hydrogen and OpenMSX): the estimators' weights for the
    # metrical level and the credit there for a vote an octave (x2, x1/2, x3, x1/3) away.
    # The cascade's threshold is not fitted (bench_music_accuracy.FIT_THRESHOLDS): a lower one
    # won on train twice and lost on held-out songs twice (v8's test half: 0.660 against 0.723;
    # v9, fitted on LMMS + Hydrogen and scored on OpenMSX: 0.757 against 0.776). The DSP
    # estimators agree and are confidently wrong on produced mixes, so `auto` runs the learned
    # backend on every track at 1.01; a lower threshold trades accuracy for speed.
    neural_below_confidence: float = 1.01
    weight_dsp: float = 1.0
    weight_percival: float = 0.3
    weight_learned: float = 3.0
    octave_credit: float = 0.5
    # the level step's prior: this much weight lost per octave away from `prior_bpm` (fitted; a
    # tie-breaker at 0.01, v9's 2.0 two-thirds of one learned vote)
    level_prior: float = 2.0
    max_analysis_s: float = 600.0  # longer tracks: analyse the first 10 minutes

    def tempo_config(self) -> TempoConfig:
        return TempoConfig(
            self.min_bpm,
            self.max_bpm,
            self.prior_bpm,
            self.prior_width,
            self.salience_weight,
            self.keep_bonus,
            comb=False,
        )

    def key_config(self) -> KeyConfig:
        return KeyConfig(
            profile=self.key_profile,
            frame=self.key_frame,
            harmonics=self.key_harmonics,
            method=self.key_method,
        )


def dotted_quarter_tracked(
    beats: np.ndarray, acf: np.ndarray, superflux: np.ndarray, config: MusicConfig
) -> bool:
    """True when the tracked beats look like a compound metre followed at the quarter note: each
    beat splits in two (strong onsets halfway) and the music repeats as strongly at 1.5 beats."""
    period, _ = tempo.regular_grid(beats)
    at_beat = tempo.pulse_salience(acf, period, comb=False)
    if at_beat <= 0 or not config.min_bpm <= 60.0 / (1.5 * period) <= config.max_bpm:
        return False
    dotted = tempo.pulse_salience(acf, 1.5 * period, comb=False)
    return (
        dotted >= config.dotted_ratio * at_beat
        and tempo.subdivision(beats, superflux) < -config.dotted_halves
    )


def _logistic(features: tuple[float, ...], coef: tuple[float, ...]) -> float:
    z = coef[0] + sum(c * f for c, f in zip(coef[1:], features, strict=True))
    return float(1.0 / (1.0 + np.exp(-z)))


# --------------------------------------------------------------------------------------------
# Tempo and beats


def tempo_and_beats(
    odfs: dict[str, np.ndarray], duration_s: float, config: MusicConfig
) -> dict[str, Any]:
    """Beats at the chosen metrical level, BPM, confidence and the evidence behind them."""
    none = {"beats": np.zeros(0), "bpm": 0.0, "bpm_confidence": 0.0, "level": 1.0}
    if odfs["superflux"].shape[0] < ODF_RATE * 4 or float(odfs["superflux"].max()) <= 0:
        return none  # too short or no onsets: no tempo to speak of
    tempo_config = config.tempo_config()
    tracked = tempo.tracked_beats(odfs, tempo_config)
    agreed, agreement = tempo.max_agreement(tracked)
    if agreed.shape[0] < 4:
        return none
    acf = sum(tempo.periodicity(odfs[name]) for name in LEVEL_ODFS) / len(LEVEL_ODFS)
    factor, scores = tempo.choose_level(agreed, acf, tempo_config)
    beats = tempo.beats_at_level(agreed, factor, odfs["superflux"], duration_s)
    if beats.shape[0] < 4:
        return none
    evidence = tempo.backbeat_one_level_down(beats, odfs)
    if (
        evidence is not None
        and 2 * 60.0 / tempo.regular_grid(beats)[0] <= config.max_bpm
        and evidence[0] < config.backbeat_even_strength
        and evidence[1] - evidence[0] > config.backbeat_contrast
    ):
        beats = tempo.beats_at_level(beats, 2.0, odfs["superflux"], duration_s)
        factor *= 2
    elif (
        factor == 1.0
        and (evidence is None or evidence[1] < config.dotted_max_kick_snare)
        and dotted_quarter_tracked(agreed, acf, odfs["superflux"], config)
    ):
        # Only without a kick / snare groove: its syncopation (kicks 1.5 beats apart in drum &
        # bass and 3-3-2 pop patterns) repeats at 1.5 beats too, and there the tracked beat is right.
        dotted = tempo.beats_at_level(agreed, 2.0 / 3.0, odfs["superflux"], duration_s)
        if dotted.shape[0] >= 4:
            beats, factor = dotted, 2.0 / 3.0
    period, _ = tempo.regular_grid(beats)
    ranked = sorted(scores.values(), reverse=True)
    margin = ranked[0] - ranked[1] if len(ranked) > 1 else 5.0
    salience = tempo.pulse_salience(acf, period)
    confidence = _logistic((agreement, min(margin, 5.0), salience), BPM_CONFIDENCE_COEF)
    bpm = 60.0 / tempo.refine_period(acf, period, config.period_refine_span)
    return {
        "beats": beats,
        "bpm": bpm,
        "bpm_confidence": confidence,
        "level": factor,
        "agreement": agreement,
        "margin": margin,
        "salience": salience,
    }


def beat_accents(beats: np.ndarray, odfs: dict[str, np.ndarray]) -> np.ndarray:
    """Per-beat evidence of a bar start: kick-band accent plus the change of the mean spectrum
    from the previous beat (chords change on downbeats), each normalised to mean 1."""
    low = tempo._accent(odfs["low"], beats)
    change = tempo.harmonic_change(beats, odfs["mel_bands"])
    parts = [x / x.mean() for x in (low, change) if x.shape[0] and x.mean() > 1e-9]
    return sum(parts) if parts else np.zeros(beats.shape[0])


def metre_and_downbeats(
    beats: np.ndarray, bpm: float, odfs: dict[str, np.ndarray], config: MusicConfig
) -> tuple[str | None, np.ndarray]:
    if beats.shape[0] < 12:
        return None, np.zeros(0)
    compound = tempo.subdivision(beats, odfs["superflux"]) > config.compound_threshold
    accents = beat_accents(beats, odfs)
    group, phase, explained = tempo.bar_grouping(beats, accents)
    if (
        group == 3
        and explained[3]
        < max(explained.get(2, -1.0), explained.get(4, -1.0)) + config.triple_margin
    ):
        group, phase, _ = tempo.bar_grouping(beats, accents, groups=(2, 4))
    if compound:
        if group == 3:
            return "9/8", beats[phase::3]
        if bpm < config.twelve_eight_below_bpm:  # slow compound quadruple: 12/8
            _, phase, _ = tempo.bar_grouping(beats, accents, groups=(4,))
            return "12/8", beats[phase::4]
        return "6/8", beats[phase::2]
    if group == 3:
        return "3/4", beats[phase::3]
    # bars of two or four beats: written 4/4, the bar line at the best phase of four
    _, phase, _ = tempo.bar_grouping(beats, accents, groups=(4,))
    return "4/4", beats[phase::4]


# --------------------------------------------------------------------------------------------
# The tempo ensemble and the cascade

OCTAVE_FACTORS = (2.0, 0.5, 3.0, 1.0 / 3.0)
AGREEMENT_TOLERANCE = 0.04
# Logistic calibration of bpm_confidence on ensemble_confidence_features, fitted on the
# real-production development set (v9: bench --fit-by-source, every row; --fit-confidence for
# the settings as they are), slopes kept >= 0.
ENSEMBLE_CONFIDENCE_COEF = (0.21, 0.203, 1.082, 0.0)


def ensemble_confidence_features(
    share: float, agreement: float, learned: Any = None
) -> tuple[float, float, float]:
    """What bpm_confidence is fitted on: the winner's share of the weighted vote, bpm_agreement,
    and the learned backend's own confidence (its mean activation at its beats; 0 when it did not
    run)."""
    return share, agreement, float(learned.confidence) if learned is not None else 0.0


def _within(bpm: float, reference: float, tolerance: float = AGREEMENT_TOLERANCE) -> bool:
    return reference > 0 and bpm > 0 and abs(bpm - reference) <= tolerance * reference


def estimator_weight(name: str, config: MusicConfig) -> float:
    if name == "dsp":
        return config.weight_dsp
    if name == "percival":
        return config.weight_percival
    return config.weight_learned


def _related(bpm: float, reference: float) -> bool:
    """Same pulse: within 4 % of the reference or of its double, half, triple or third."""
    return _within(bpm, reference) or any(_within(bpm, reference * f) for f in OCTAVE_FACTORS)


def _octave_of(bpm: float, reference: float) -> bool:
    """The same level or an octave away: within 4 % of the reference, its double or its half."""
    return any(_within(bpm, reference * f) for f in (1.0, 2.0, 0.5))


def compound_pulse(analysis: DspAnalysis, config: MusicConfig) -> bool:
    """The two DSP estimators agree on a beat that divides in three (a compound metre's dotted
    quarter: onsets at the thirds of the DSP path's beats beat those halfway by
    `compound_threshold`)."""
    found = {e["estimator"]: e["bpm"] for e in analysis.estimates}
    dsp, percival = found.get("dsp"), found.get("percival")
    beats = np.asarray(analysis.result.get("beats", ()))
    return bool(
        dsp
        and percival
        and _within(percival, dsp)
        and tempo.subdivision(beats, analysis.odfs["superflux"]) > config.compound_threshold
    )


HEMIOLA_FACTORS = (1.5, 3.0)  # the quarter note and the eighth of a dotted-quarter beat


def vote(
    estimates: list[dict[str, Any]], config: MusicConfig, compound: bool = False
) -> tuple[dict[str, Any] | None, float, float]:
    """The estimate the ensemble chooses, its share of the weighted vote, and bpm_agreement.

    Agreement first, in two steps: the pulse is the one most estimators find at some metrical
    level (within 4 % of a candidate, its double, half, triple or third; each estimator one vote,
    the weights break ties); the level within that pulse (`level_among`: among the pulse step's
    winner and the estimates an octave from it) is the candidate with the most weight exactly
    within 4 % (`weight_*`: the learned backend's levels are the most reliable on real
    productions), less `level_prior` per octave away from `prior_bpm`. bpm_agreement: the share
    of estimators within 4 % of the choice, an octave / a third away counting half (they found
    the pulse, not the level).

    `compound` (`compound_level = "dotted"` and compound_pulse: the DSP estimators agree on a
    beat divided in three): a choice at 1.5 or 3 times the DSP path's tempo is the quarter or the
    eighth of a 6/8 or 12/8 (BeatNet follows jigs at the quarter), so the DSP path's dotted
    quarter is chosen (the renders' jigs: 0.30 acc1 at the quarter, 0.75 with it)."""
    usable = [e for e in estimates if e["bpm"] and e["bpm"] > 0]
    if not usable:
        return None, 0.0, 0.0
    weight = {id(e): estimator_weight(e["estimator"], config) for e in usable}
    total = sum(weight.values())

    def family(candidate: dict[str, Any]) -> tuple[int, float]:
        related = [o for o in usable if _related(o["bpm"], candidate["bpm"])]
        return len(related), sum(weight[id(o)] for o in related)

    pulse = max(family(e) for e in usable)
    members = [e for e in usable if family(e) == pulse]

    def level(candidate: dict[str, Any]) -> float:
        exact = sum(weight[id(o)] for o in usable if _within(o["bpm"], candidate["bpm"]))
        octave = sum(
            weight[id(o)]
            for o in usable
            if not _within(o["bpm"], candidate["bpm"]) and _related(o["bpm"], candidate["bpm"])
        )
        prior = -config.level_prior * abs(np.log2(candidate["bpm"] / config.prior_bpm))
        return exact + config.octave_credit * octave + prior + 1e-3 * weight[id(candidate)]

    best = max(members, key=level)
    if config.level_among == "octaves":
        best = max((e for e in usable if _octave_of(e["bpm"], best["bpm"])), key=level)
    if compound:
        dsp = next((e for e in usable if e["estimator"] == "dsp"), None)
        if dsp is not None and any(_within(best["bpm"], dsp["bpm"] * f) for f in HEMIOLA_FACTORS):
            best = dsp
    exact = sum(_within(e["bpm"], best["bpm"]) for e in estimates)
    octave = sum(
        not _within(e["bpm"], best["bpm"]) and _related(e["bpm"], best["bpm"]) for e in estimates
    )
    agreement = (exact + 0.5 * octave) / len(estimates)
    share = sum(weight[id(e)] for e in usable if _within(e["bpm"], best["bpm"])) / total
    return best, share, agreement


def _beat_refiner(models: tuple[int, ...]) -> Any:
    """The shipped beat refiner, checked against the BeatNet trainings the stage runs (None, with
    a one-line note, where an install left its weights out)."""
    from songmill.model.beat_refiner import load_pretrained
    from songmill.model.weights import WeightsMissing

    try:
        refiner = load_pretrained()
    except WeightsMissing as exc:
        print(
            f"music: beat refiner unavailable ({exc}); BeatNet's own activations", file=sys.stderr
        )
        return None
    wanted = tuple(refiner.config.beatnet_models)
    if tuple(sorted(models)) != tuple(sorted(wanted)):
        raise ValueError(
            f"music: beatnet_refiner reads BeatNet trainings {','.join(map(str, wanted))}; set "
            f'beatnet_models = "{",".join(map(str, wanted))}" or beatnet_refiner = false'
        )
    return refiner


def needs_learned(estimates: list[dict[str, Any]], config: MusicConfig) -> bool:
    """The cascade's rule: the learned backend runs unless every DSP estimator agrees within 4 %
    and the stage's own calibrated confidence reaches `neural_below_confidence`."""
    if config.neural == "always":
        return True
    if config.neural == "never":
        return False
    dsp = [e for e in estimates if e["estimator"] in DSP_ESTIMATORS]
    if not dsp or any(not e["bpm"] for e in dsp):
        return True
    agree = all(_within(e["bpm"], dsp[0]["bpm"]) for e in dsp[1:])
    stage_confidence = next((e["confidence"] for e in dsp if e["estimator"] == "dsp"), 0.0) or 0.0
    return not agree or stage_confidence < config.neural_below_confidence


DSP_ESTIMATORS = ("dsp", "percival")


def percival_bpm(y: np.ndarray, config: MusicConfig) -> float:
    """essentia's PercivalBpmEstimator (Percival & Tzanetakis 2014) on the analysis signal."""
    es = tempo.essentia_standard()
    try:
        bpm = float(
            es.PercivalBpmEstimator(
                sampleRate=ANALYSIS_SR, minBPM=int(config.min_bpm), maxBPM=int(config.max_bpm)
            )(y)
        )
    except RuntimeError:  # essentia raises on degenerate input (silence)
        return 0.0
    return bpm if np.isfinite(bpm) and bpm > 0 else 0.0


@dataclass
class DspAnalysis:
    """What the DSP path measured: onset functions, the stage's tempo / beats, the estimates."""

    odfs: dict[str, np.ndarray]
    duration_s: float
    result: dict[str, Any]
    estimates: list[dict[str, Any]]
    key: dict[str, Any]


def dsp_analysis(y: np.ndarray, config: MusicConfig, sr: int = ANALYSIS_SR) -> DspAnalysis:
    """Every cheap estimator on mono audio (ANALYSIS_SR unless `sr` says otherwise), and the key."""
    if y.ndim != 1:
        raise ValueError(f"music analysis needs mono audio, got shape {y.shape}")
    if y.shape[0] < MIN_ANALYSIS_S * sr:
        raise ValueError(
            f"too short for music analysis: {y.shape[0] / sr:.3f} s (needs {MIN_ANALYSIS_S} s)"
        )
    if sr != ANALYSIS_SR:
        y = analysis_signal(y, sr)
    if not np.isfinite(y).all():
        raise ValueError("audio holds NaN or Inf samples")
    y = np.ascontiguousarray(y[: int(config.max_analysis_s * ANALYSIS_SR)], dtype=np.float32)
    duration_s = y.shape[0] / ANALYSIS_SR
    odfs = tempo.onset_functions(y)
    result = tempo_and_beats(odfs, duration_s, config)
    estimates = [
        {
            "estimator": "dsp",
            "bpm": round(float(result["bpm"]), 2),
            "confidence": round(float(result["bpm_confidence"]), 3),
        },
        {
            "estimator": "percival",
            "bpm": round(percival_bpm(y, config), 2) if result["bpm"] > 0 else 0.0,
            "confidence": None,
        },
    ]
    return DspAnalysis(
        odfs, duration_s, result, estimates, tuning_and_key(y, ANALYSIS_SR, config.key_config())
    )


def finish(
    analysis: DspAnalysis, config: MusicConfig, learned: Any = None, learned_name: str = ""
) -> dict[str, Any]:
    """The music row: the ensemble's tempo, and beats / downbeats from the learned backend where
    it ran (`learned`: a music_learned.LearnedBeats), else from the DSP path; with beat_choice
    "agreement", the beats the candidates agree on most (its networks' own, the DSP path's)."""
    estimates = [dict(e) for e in analysis.estimates]
    if learned is not None:
        estimates.append(
            {
                "estimator": learned_name,
                "bpm": round(float(learned.bpm), 2),
                "confidence": round(float(learned.confidence), 3),
            }
        )
        estimates += [dict(v) for v in getattr(learned, "votes", ())]
    compound = config.compound_level == "dotted" and compound_pulse(analysis, config)
    best, share, agreement = vote(estimates, config, compound)
    bpm = float(best["bpm"]) if best is not None else 0.0
    if learned is not None and learned.beats.shape[0] >= 4:
        source, beats, downbeats, source_bpm = (
            learned_name,
            learned.beats,
            learned.downbeats,
            learned.bpm,
        )
    else:
        source, beats, downbeats, source_bpm = (
            "dsp",
            analysis.result["beats"],
            None,
            analysis.result["bpm"],
        )
    moved = beats_at_tempo(beats, source_bpm, bpm, analysis)
    if moved is not None and moved is not beats:
        beats, downbeats = moved, None  # the ensemble chose another level than the beats' source
    if config.beat_choice == "agreement" and learned is not None and bpm > 0:
        candidates = {source: beats}
        others = {**getattr(learned, "alternatives", {}), "dsp": analysis.result["beats"]}
        for name, other in others.items():
            other = beats_at_tempo(np.asarray(other), 0.0, bpm, analysis)
            if other is not None:
                candidates[name] = other
        chosen = tempo.most_agreed(candidates)
        if chosen != source:
            source, beats, downbeats = chosen, candidates[chosen], None
    signature, dsp_downbeats = (
        metre_and_downbeats(beats, bpm, analysis.odfs, config) if bpm > 0 else (None, np.zeros(0))
    )
    if downbeats is None:
        downbeats = dsp_downbeats
    confidence = (
        _logistic(ensemble_confidence_features(share, agreement, learned), ENSEMBLE_CONFIDENCE_COEF)
        if bpm > 0
        else 0.0
    )
    row: dict[str, Any] = {
        "bpm": round(bpm, 2) if bpm > 0 else None,
        "bpm_confidence": confidence,
        "bpm_agreement": round(float(agreement), 3),
        "bpm_estimates": estimates,
        "beat_source": source,
        "beats": [round(float(b), 4) for b in beats],
        "downbeats": [round(float(b), 4) for b in downbeats],
        "time_signature": signature,
    }
    row.update(analysis.key)
    return row


LEVEL_FACTORS = (0.5, 2.0, 1.0 / 3.0, 3.0, 2.0 / 3.0, 1.5)


def beats_at_tempo(
    beats: np.ndarray, beats_bpm: float, bpm: float, analysis: DspAnalysis
) -> np.ndarray | None:
    """`beats` (at `beats_bpm`; 0: their own regression tempo) at the ensemble's `bpm`: as they
    are within 4 %, moved to another metrical level (LEVEL_FACTORS) within 8 %, else None (and
    None for fewer than four beats); `beats` itself when unchanged."""
    if beats.shape[0] < 4:
        return None
    from songmill.annotate.music_learned import tempo_of

    beats_bpm = beats_bpm or tempo_of(beats)
    if bpm <= 0 or beats_bpm <= 0 or _within(bpm, beats_bpm):
        return beats
    ratio = bpm / beats_bpm
    factor = min(LEVEL_FACTORS, key=lambda f: abs(np.log(ratio / f)))
    if abs(np.log(ratio / factor)) >= 0.08:
        return None
    return tempo.beats_at_level(beats, factor, analysis.odfs["superflux"], analysis.duration_s)


def analyse(
    y: np.ndarray, config: MusicConfig, sr: int = ANALYSIS_SR, learned: Any = None
) -> dict[str, Any]:
    """Music row for mono float audio at `sr` (ANALYSIS_SR unless resampled by the caller).

    `learned`: a callable returning (backend name, music_learned.LearnedBeats), called only when
    the cascade (`config.neural`) asks for the learned backend on this track.
    """
    analysis = dsp_analysis(y, config, sr)
    if learned is not None and needs_learned(analysis.estimates, config):
        name, beats = learned()
        return finish(analysis, config, beats, name)
    return finish(analysis, config)


class MusicStage(Stage):
    name = "music"
    # v2: onset-function ensemble with a fitted tempo prior, downbeats, 6/8 and 12/8, key profile
    # and confidences chosen on the real-composition development set, optional Beat This.
    # v3: key from a harmonic-weighted HPCP with the bgate profile, key_confidence from the
    # agreement of the track's parts, 6/8 tracked at the quarter note moved to the dotted quarter.
    # v4: KeyExtractor's chroma as a fallback when the stage chroma's key is weak (other timbres),
    # key_confidence refitted on the pooled training halves.
    # v5: key from a conditional logit over both chromas' correlations with three profiles,
    # key_confidence its probability (fitted on the pooled training halves); the BPM refined on
    # the onset autocorrelation within 5 % of the beats' period.
    # v6: the key model also weighs KeyExtractor's chroma's natural seventh (a minor key's
    # subtonic over its leading tone), refitted on the pooled training halves.
    # v7: an ensemble of tempo estimators (the v6 DSP path, essentia's Percival estimator and a
    # learned backend, BeatNet by default) that records every estimate and its agreement; the
    # learned backend runs where the DSP estimators disagree (music.neural) and gives the beats.
    # v8: the ensemble refitted on the larger real-production set (every project also at other
    # tempi, whole songs): BeatNet's networks, per-network votes by the beat-only DBN, weights,
    # the level prior; bpm_confidence on (vote share, agreement, the learned backend's own).
    # v9: refitted with a third source (OpenMSX's MIDI songs) and left-out sources as the check:
    # BeatNet 2,3, weights 1 / 0.3 / 3, octave credit 0.5, level prior 2, on every track.
    # v10: the key is the majority of the key model, KeyExtractor's chroma with bgate and essentia
    # KeyExtractor with temperley2005 (key_method = "vote"), chosen on real productions;
    # compound_level = "dotted" reports a compound metre's dotted quarter (opt-in).
    # v11: the beats are the candidates' committee choice (beat_choice = "agreement": the learned
    # backend's, each network's own and the DSP path's, at the chosen tempo), chosen on the train
    # halves; on recorded songs (Frets on Fire) beat F 0.610 -> 0.659. The learned tempo is its
    # beats' median interval (refined), not their regression slope: whole songs 0.769 -> 0.796.
    # v12: BeatNet's activations pass through the beat refiner (beatnet_refiner: a bidirectional
    # GRU fitted on the real-production train half; model/beat_refiner.py), which gives the
    # causal networks the rest of the excerpt.
    # v13: the vote's level step chooses among every estimate an octave from the pulse step's
    # winner (level_among = "octaves"), not only those whose own family is the largest.
    version = 13
    table = "music"
    config_class = MusicConfig

    def setup(self) -> None:
        tempo.essentia_standard()
        self.learned, self.learned_name, self.learned_note = None, "", ""
        config: MusicConfig = self.config  # type: ignore[assignment]
        if config.beat_backend not in ("auto", "dsp", "beat_this"):
            raise ValueError(
                f"music: beat_backend must be auto, dsp or beat_this, not {config.beat_backend!r}"
            )
        if config.neural not in ("auto", "always", "never"):
            raise ValueError(f"music: neural must be auto, always or never, not {config.neural!r}")
        if config.learned_backend not in ("beatnet", "madmom"):
            raise ValueError(
                f"music: learned_backend must be beatnet or madmom, not {config.learned_backend!r}"
            )
        if config.beat_choice not in ("agreement", "learned"):
            raise ValueError(
                f"music: beat_choice must be agreement or learned, not {config.beat_choice!r}"
            )
        if config.level_among not in ("octaves", "largest_family"):
            raise ValueError(
                f"music: level_among must be octaves or largest_family, not {config.level_among!r}"
            )
        if config.compound_level not in ("quarter", "dotted"):
            raise ValueError(
                f"music: compound_level must be quarter or dotted, not {config.compound_level!r}"
            )
        if not set(config.beatnet_models.replace(" ", "").split(",")) <= {"1", "2", "3"}:
            raise ValueError(
                f'music: beatnet_models must list 1, 2 or 3 (e.g. "1,2"), not {config.beatnet_models!r}'
            )
        if config.beat_backend == "dsp" or config.neural == "never":
            return
        device = _torch_device(config.device)
        if config.beat_backend == "beat_this" or config.beat_this_weights:
            from songmill.annotate.music_beat_this import BeatThisTracker
            from songmill.model.weights import WeightsMissing

            try:
                tracker = BeatThisTracker(config.beat_this_weights or ".", device=device)
                self.learned, self.learned_name = _beat_this_as_learned(tracker), "beat_this"
                return
            except (WeightsMissing, ImportError) as exc:
                if config.beat_backend == "beat_this":
                    raise StageUnavailable(
                        f"music: Beat This backend unavailable ({exc}); convert the authors' checkpoint with "
                        "`python -m songmill.annotate.music_beat_this final0.ckpt DIR` and set beat_this_weights = DIR"
                    ) from exc
        from songmill.annotate import music_learned

        try:
            if config.learned_backend == "madmom":
                self.learned = music_learned.MadmomTracker(
                    config.madmom_models_licence, config.min_bpm, config.max_bpm
                )
            else:
                models = tuple(int(m) for m in config.beatnet_models.split(",") if m.strip())
                self.learned = music_learned.BeatNetTracker(
                    models,
                    device=device,
                    min_bpm=max(config.min_bpm, 55.0),
                    max_bpm=min(config.max_bpm, 215.0),
                    separate_votes=config.beatnet_separate_votes,
                    refiner=_beat_refiner(models) if config.beatnet_refiner else None,
                )
            self.learned_name = config.learned_backend
        except music_learned.BackendMissing as exc:
            # one line, once: the DSP estimators carry on alone
            self.learned_note = f"music: learned beat backend {config.learned_backend} unavailable ({exc}); DSP path only"
            print(self.learned_note, file=sys.stderr)
            self.learned = None

    def process_track(self, track: Track) -> dict[str, Any]:
        mono, sr = track.audio(ANALYSIS_SR, mono=True)  # cached: shared with other stages
        if mono.shape[0] < MIN_ANALYSIS_S * sr:
            raise ValueError(
                f"too short for music analysis: {mono.shape[0] / sr:.3f} s (needs {MIN_ANALYSIS_S} s)"
            )
        tracker = getattr(self, "learned", None)
        config: MusicConfig = self.config  # type: ignore[assignment]

        def learned() -> tuple[str, Any]:
            y_22k = track.audio(22050, mono=True)[0]
            return self.learned_name, tracker(y_22k[: int(config.max_analysis_s * 22050)])

        return analyse(mono, config, learned=learned if tracker is not None else None)


def _beat_this_as_learned(tracker: Any) -> Any:
    """Beat This's (beats, downbeats) as a LearnedBeats (tempo from the beats; confidence 0.5:
    its peak picking reports none)."""
    from songmill.annotate.music_learned import LearnedBeats, tempo_of

    def run(y_22k: np.ndarray) -> LearnedBeats:
        beats, downbeats = tracker(y_22k)
        return LearnedBeats(
            np.asarray(beats), np.asarray(downbeats), tempo_of(np.asarray(beats)), 0.5
        )

    run.tracker = tracker  # type: ignore[attr-defined]
    return run


def _torch_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def analysis_signal(samples: np.ndarray, sr: int) -> np.ndarray:
    """Mono at ANALYSIS_SR."""
    return to_mono_resampled(samples, sr, ANALYSIS_SR)
