"""`structure` stage: song sections (intro / verse / pre-chorus / chorus / bridge / instrumental /
outro) with start and end times.

Two backends, chosen with `--set structure.backend=dsp|model`:

- `dsp` (runs everywhere, no weights): beat-synchronous chroma + MFCC + loudness features (beats
  from the music stage's row when there is one, else librosa's tracker); a self-similarity
  matrix and Foote's checkerboard novelty along its diagonal (where the sound changes), averaged
  with a repetition curve (Serra et al.'s structure features over a k-NN recurrence of
  context-stacked chroma: where the pattern of repeats changes, which also finds the boundary
  between two passes of the same material); peaks at least `min_section_s` apart. Labels come
  from repetition: segments are clustered by their mean features, the repeated cluster with the
  most energy is the chorus, the other repeated material is verse (or pre-chorus when it always
  leads into a chorus), unrepeated material is intro (first), outro (last) or bridge, and a
  section in which the transcript has no words, in a song that has words, is instrumental.
- `model`: a frame-level network (annotate/structure_model.py: SongFormer-style transformer over
  log-mel + chroma frames, a boundary head and a label head), its weights by path
  (`structure.model_path`, a folder with structure.safetensors + structure.json).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from songmill.annotate.base import Stage, StageConfig, StageUnavailable, Track
from songmill.data_schema.labels import SECTION_LABELS

SAMPLE_RATE = 22050
HOP = 512


@dataclass
class StructureConfig(StageConfig):
    backend: str = "dsp"  # dsp | model
    model_path: str = ""  # model backend: folder with structure.safetensors + structure.json
    min_section_s: float = 6.0
    kernel_beats: int = 32  # checkerboard kernel width (beats)
    context_beats: int = 0  # beats of context on each side stacked into each feature vector
    # Repetition boundaries (Serra et al.'s structure features): where the lag-recurrence pattern of
    # the chroma changes, e.g. between two passes of the same material that novelty cannot hear.
    repetition_weight: float = 0.5  # share of the repetition curve in the boundary curve
    repetition_context: int = 4  # beats of chroma context on each side for the recurrence
    repetition_knn: float = 0.03  # neighbours per beat, as a share of the beats
    repetition_smooth_beats: float = 4.0  # Gaussian smoothing of the lag matrix along time
    peak_sigma: float = 0.5  # novelty peaks must exceed mean + peak_sigma * std
    same_section: float = (
        0.35  # cosine distance under which two segments count as the same material
    )
    max_duration_s: float = 1200.0  # longer tracks: the first max_duration_s


# -- features ---------------------------------------------------------------------------------------


def beat_times(audio: np.ndarray, sr: int, music_row: dict | None = None) -> np.ndarray:
    """Beat times (s): the music stage's beats when it found enough, else librosa's tracker, else
    a half-second grid (silence, noise)."""
    duration = len(audio) / sr
    beats = np.asarray((music_row or {}).get("beats") or [], dtype=np.float64)
    if len(beats) < 8:
        import librosa

        _, frames = librosa.beat.beat_track(y=audio, sr=sr, hop_length=HOP)
        beats = librosa.frames_to_time(frames, sr=sr, hop_length=HOP)
    if len(beats) < 8:
        beats = np.arange(0.0, duration, 0.5)
    beats = beats[(beats >= 0) & (beats < duration)]
    return beats


def beat_features(
    audio: np.ndarray, sr: int, beats: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dims, n_beats) normalised features, (n_beats,) loudness in dB, and the beat-interval
    start times (s), starting at 0."""
    import librosa

    stft = np.abs(librosa.stft(audio, n_fft=2048, hop_length=HOP))
    chroma = librosa.feature.chroma_stft(
        S=stft**2, sr=sr, tuning=0.0
    )  # the music stage measures tuning
    mel = librosa.feature.melspectrogram(S=stft**2, sr=sr, n_mels=64)
    mfcc = librosa.feature.mfcc(S=librosa.power_to_db(mel + 1e-10), n_mfcc=13)
    rms = librosa.feature.rms(S=stft, frame_length=2048)
    frames = librosa.time_to_frames(beats, sr=sr, hop_length=HOP)
    frames = np.unique(np.concatenate([[0], frames[frames < stft.shape[1]]]))
    sync = lambda x: librosa.util.sync(x, frames, aggregate=np.median)  # noqa: E731
    chroma_b, mfcc_b, rms_b = sync(chroma), sync(mfcc), sync(rms)[0]
    mfcc_b = (mfcc_b - mfcc_b.mean(1, keepdims=True)) / (mfcc_b.std(1, keepdims=True) + 1e-6)
    chroma_b = chroma_b / (np.linalg.norm(chroma_b, axis=0, keepdims=True) + 1e-6)
    loud = 20 * np.log10(rms_b + 1e-8)
    loud_z = (loud - loud.mean()) / (loud.std() + 1e-6)
    # Timbre and loudness carry most section changes; chroma (the chords change every bar within
    # a section too) gets a smaller weight.
    features = np.vstack([chroma_b * 0.6, mfcc_b[1:] / 3.0, loud_z[None] / 2.0])
    starts = librosa.frames_to_time(frames, sr=sr, hop_length=HOP)[: features.shape[1]]
    return features, loud, starts


def with_context(features: np.ndarray, k: int) -> np.ndarray:
    """Each beat's features stacked with those of the k beats on each side (centred, so that
    boundaries do not shift)."""
    if k <= 0:
        return features
    n = features.shape[1]
    idx = np.clip(np.arange(n)[None, :] + np.arange(-k, k + 1)[:, None], 0, n - 1)
    return np.concatenate([features[:, i] for i in idx], axis=0)


def novelty(ssm: np.ndarray, width: int) -> np.ndarray:
    """Foote novelty: a Gaussian-tapered checkerboard kernel slid along the SSM's diagonal."""
    half = max(1, width // 2)
    idx = np.arange(-half, half) + 0.5
    taper = np.exp(-0.5 * (idx / (0.5 * half)) ** 2)
    kernel = np.outer(taper, taper) * np.outer(np.sign(idx), np.sign(idx))
    n = ssm.shape[0]
    padded = np.pad(ssm, half, mode="edge")
    out = np.zeros(n)
    for i in range(n):
        out[i] = float((padded[i : i + 2 * half, i : i + 2 * half] * kernel).sum())
    return np.maximum(out, 0.0)


def repetition_novelty(chroma: np.ndarray, context: int, knn: float, smooth: float) -> np.ndarray:
    """Structure-feature novelty: a mutual k-nearest-neighbour recurrence of context-stacked
    chroma, turned into a (lag, time) matrix, smoothed, and the change between consecutive beats."""
    from scipy.ndimage import gaussian_filter

    x = with_context(chroma, context)
    x = x - x.mean(1, keepdims=True)
    unit = x / (np.linalg.norm(x, axis=0, keepdims=True) + 1e-9)
    sim = unit.T @ unit
    n = sim.shape[0]
    k = max(2, int(knn * n))
    kth = np.sort(sim, axis=1)[:, -k]
    recurrence = (sim >= kth[:, None]) & (sim >= kth[None, :])
    lag_index = (np.arange(n)[None, :] - np.arange(n)[:, None]) % n  # [lag, t] -> beat t - lag
    lag = recurrence[np.arange(n)[None, :], lag_index].astype(np.float64)
    smoothed = gaussian_filter(lag, sigma=(0.5, smooth))
    out = np.zeros(n)
    out[1:] = np.sqrt(((smoothed[:, 1:] - smoothed[:, :-1]) ** 2).sum(0))
    return out


def pick_peaks(curve: np.ndarray, min_distance: int, sigma: float) -> list[int]:
    """Local maxima at least `min_distance` apart (strongest first) above mean + sigma * std, and
    no nearer than that to either end."""
    if len(curve) < 3:
        return []
    threshold = curve.mean() + sigma * curve.std()
    candidates = [
        i
        for i in range(1, len(curve) - 1)
        if curve[i] >= curve[i - 1] and curve[i] >= curve[i + 1] and curve[i] > threshold
    ]
    chosen: list[int] = []
    for i in sorted(candidates, key=lambda j: -curve[j]):
        if min_distance <= i <= len(curve) - 1 - min_distance and all(
            abs(i - c) >= min_distance for c in chosen
        ):
            chosen.append(i)
    return sorted(chosen)


def cluster_segments(means: np.ndarray, threshold: float) -> list[int]:
    """Cluster ids of segment mean vectors (average-linkage, cosine distance cut at threshold)."""
    if len(means) == 1:
        return [0]
    from scipy.cluster.hierarchy import fcluster, linkage

    tree = linkage(means, method="average", metric="cosine")
    ids = fcluster(tree, t=threshold, criterion="distance")
    # Renumber in order of first appearance: 0 = the first segment's material.
    order: dict[int, int] = {}
    return [order.setdefault(int(c), len(order)) for c in ids]


def _frames(at: list[int], n: int) -> bool:
    """True when `at` (sorted segment indices) is one segment at an edge, or a run at the start
    plus a run at the end with other material between."""
    if len(at) == 1:
        return at[0] in (0, n - 1)
    lead = 0
    while lead < len(at) and at[lead] == lead:
        lead += 1
    trail = 0
    while trail < len(at) - lead and at[len(at) - 1 - trail] == n - 1 - trail:
        trail += 1
    return lead > 0 and trail > 0 and lead + trail == len(at) and len(at) < n - 1


def label_segments(clusters: list[int], energy: list[float]) -> list[str]:
    """Section labels from repetition and energy (see the module docstring)."""
    n = len(clusters)
    if n == 1:
        return ["verse"]
    where = {c: [i for i in range(n) if clusters[i] == c] for c in dict.fromkeys(clusters)}
    # Material heard only at the start and the end (a run of segments at each) frames the song:
    # intro / outro, repeated or not.
    framing = {c for c, at in where.items() if _frames(at, n)}
    repeated = [c for c, at in where.items() if len(at) >= 2 and c not in framing]
    mean_energy = {c: float(np.mean([energy[i] for i in at])) for c, at in where.items()}
    chorus = max(repeated, key=lambda c: (mean_energy[c], len(where[c]))) if repeated else None
    others = [c for c in repeated if c != chorus]  # in order of first appearance
    verse = others[0] if others else None
    labels = []
    for i, c in enumerate(clusters):
        if c == chorus:
            labels.append("chorus")
        elif c == verse:
            labels.append("verse")
        elif c in others:
            leads_in = all(j + 1 < n and clusters[j + 1] == chorus for j in where[c])
            labels.append("pre-chorus" if leads_in else "verse")
        elif c in framing:
            labels.append("intro" if i < n / 2 else "outro")
        elif i == 0:
            labels.append("intro")
        elif i == n - 1:
            labels.append("outro")
        else:
            labels.append("bridge")
    return labels


def mark_instrumental(sections: list[dict], transcript: dict | None) -> None:
    """A section with no transcribed words, in a song that has words, is instrumental."""
    if (
        not transcript
        or transcript.get("input") == "none"
        or not (transcript.get("text") or "").strip()
    ):
        return
    if transcript.get("hallucination"):
        return
    segments = [s for s in transcript.get("segments") or [] if (s.get("text") or "").strip()]
    for section in sections:
        if section["label"] in ("intro", "outro"):
            continue
        sung = any(s["start"] < section["end"] and s["end"] > section["start"] for s in segments)
        if not sung:
            section["label"] = "instrumental"


def dsp_sections(
    audio: np.ndarray, sr: int, cfg: StructureConfig, music_row: dict | None = None
) -> list[dict]:
    duration = len(audio) / sr
    if duration < 2 * cfg.min_section_s or float(np.abs(audio).max(initial=0.0)) < 1e-6:
        return [
            {
                "start": 0.0,
                "end": duration,
                "label": "verse" if duration >= cfg.min_section_s else "intro",
                "confidence": 0.0,
            }
        ]
    beats = beat_times(audio, sr, music_row)
    features, loud, starts = beat_features(audio, sr, beats)
    stacked = with_context(features, cfg.context_beats)
    stacked = stacked - stacked.mean(1, keepdims=True)
    unit = stacked / (np.linalg.norm(stacked, axis=0, keepdims=True) + 1e-9)
    ssm = unit.T @ unit
    curve = novelty(ssm, cfg.kernel_beats)
    curve = curve / (curve.max() + 1e-9)
    if cfg.repetition_weight > 0 and features.shape[1] > 8:
        repeats = repetition_novelty(
            features[:12], cfg.repetition_context, cfg.repetition_knn, cfg.repetition_smooth_beats
        )
        curve = (1 - cfg.repetition_weight) * curve + cfg.repetition_weight * repeats / (
            repeats.max() + 1e-9
        )
    beat_s = float(np.median(np.diff(starts))) if len(starts) > 1 else 0.5
    min_beats = max(2, int(round(cfg.min_section_s / max(beat_s, 1e-3))))
    peaks = pick_peaks(curve, min_beats, cfg.peak_sigma)
    edges = [0, *peaks, features.shape[1]]
    strength = curve / (curve.max() + 1e-9)
    bounds = [0.0, *[float(starts[p]) for p in peaks], duration]
    centred = features - features.mean(1, keepdims=True)
    means = np.stack([centred[:, a:b].mean(1) for a, b in zip(edges[:-1], edges[1:], strict=True)])
    energy = [float(loud[a:b].mean()) for a, b in zip(edges[:-1], edges[1:], strict=True)]
    labels = label_segments(cluster_segments(means, cfg.same_section), energy)
    return [
        {
            "start": bounds[i],
            "end": bounds[i + 1],
            "label": labels[i],
            "confidence": float(strength[edges[i]]) if i else 1.0,
        }
        for i in range(len(labels))
    ]


# -- evaluation -------------------------------------------------------------------------------------


def boundary_hit_rate(
    reference: list[float], estimated: list[float], window: float
) -> dict[str, float]:
    """Precision, recall and F of estimated boundaries against reference ones (inner boundaries,
    one-to-one matches within +-window seconds, as mir_eval's hit rate)."""
    ref, est = sorted(reference), sorted(estimated)
    pairs = sorted(
        (abs(r - e), i, j)
        for i, r in enumerate(ref)
        for j, e in enumerate(est)
        if abs(r - e) <= window
    )
    used_r, used_e, hits = set(), set(), 0
    for _, i, j in pairs:
        if i not in used_r and j not in used_e:
            used_r.add(i)
            used_e.add(j)
            hits += 1
    precision = hits / len(est) if est else 0.0
    recall = hits / len(ref) if ref else 0.0
    f = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f": f}


def inner_boundaries(sections: list[dict]) -> list[float]:
    return [float(s["start"]) for s in sections[1:]]


# -- the stage --------------------------------------------------------------------------------------


class StructureStage(Stage):
    name: ClassVar[str] = "structure"
    version: ClassVar[int] = 1
    table: ClassVar[str] = "structure"
    reads: ClassVar[tuple[str, ...]] = ("music", "transcripts")
    config_class = StructureConfig
    config: StructureConfig

    def __init__(self, config: StructureConfig | None = None, corpus=None):
        super().__init__(config, corpus)
        self.model = None

    def setup(self) -> None:
        cfg = self.config
        if cfg.backend == "dsp":
            return
        if cfg.backend != "model":
            raise StageUnavailable(f"structure.backend must be dsp or model, not {cfg.backend!r}")
        if self.model is None:
            from songmill.annotate.structure_model import load_structure_model

            self.model = load_structure_model(cfg.model_path, cfg.device)

    def process_track(self, track: Track) -> dict[str, Any]:
        cfg = self.config
        audio, sr = track.finite_audio(SAMPLE_RATE, mono=True)
        audio = np.ascontiguousarray(audio[: int(cfg.max_duration_s * sr)], np.float32)
        if cfg.backend == "model":
            self.setup()
            sections = self.model.sections(audio, sr, cfg.min_section_s)
        else:
            sections = dsp_sections(audio, sr, cfg, track.inputs.get("music"))
        mark_instrumental(sections, track.inputs.get("transcripts"))
        assert all(s["label"] in SECTION_LABELS for s in sections)
        labels = [s["label"] for s in sections]
        return {
            "sections": sections,
            "form": " ".join(labels),
            "n_sections": len(sections),
            "has_chorus": "chorus" in labels,
            "structure_backend": cfg.backend,
            "structure_model": cfg.model_path if cfg.backend == "model" else "",
        }
