"""Near-duplicate audio: precision / recall on a held-out half, fingerprint speed, clustering time.

1. The set: real compositions rendered through fluidsynth (the devset of
   benchmarks/devset/build_devset.py: Bach chorales, jigs, reels and chamber pieces, many in one
   key, tempo and soundfont: hard confusers) and `--songs` + `--unrelated` generated songs
   (testaudio/synth.py; "artist" groups of three sharing style, tempo and key, differing only in
   their seed). Every other devset piece and every generated song gets ten copies: mp3 128 k,
   ogg, opus, resampled to 22.05 and 48 kHz, -8 dB and +4 dB gain, mono, a lead-in trim and a
   tail trim of 1-5 s. Everything goes through the real stage (decode, 11025 Hz mono,
   Chromaprint). Recordings are split in two halves by a hash of their name: the index settings
   (match_bits, threshold) are tuned on one half (best pair F1, the middle of the best range) and
   precision / recall over pairs (two files of one recording = a true pair) reported on the
   other, next to the same-run baselines of the previous rule (1 - bit error rate >= 0.75) and of
   the alternative fingerprint.
2. The alternative: a spectral-peak landmark fingerprint (Wang 2003 style, written here: 8 kHz
   STFT peaks, anchor-target pairs hashed with their time gap, matched by offset voting through
   the same inverted index), tuned and scored on the same halves, timed the same way.
3. Speed (`--part speed`, run it under the timing lock): x realtime per core (CPU time) of the
   stage with and without decoding, of the landmark fingerprint, and of the same-run baseline
   `fpcalc` (Chromaprint's own tool, FFmpeg decoding), over `--speed-files` files of the set.
4. Clustering (`--part clustering`, under the timing lock): `--fingerprints` realistic
   fingerprints written to a corpus, each a sequence of random 5-30 s crops of the set's real
   Chromaprint fingerprints XOR-ed with a per-fingerprint random mask of the low 20 bits only (the
   top 12 bits, 6 of the 16 classifiers, keep the real skewed values, so unrelated fingerprints
   share index keys far more often than random ones do: `key_load`, the mean number of tracks
   holding an entry's key, is printed for both sets), 5 % of them planted copies built from
   the same crops of the set's real transformed copies (codec noise, gain, resampling) shifted
   by up to 5 s. Timed: the full index build (`update_index(full=True)`, reading the corpus), an
   incremental build of 1 % new fingerprints, and, same run, the in-memory clustering of
   uniform-random fingerprints (last session's set) and a brute-force scan on a sample.

    .venv/bin/python benchmarks/bench_fingerprint.py --cache /tmp/fpbench --part accuracy
    flock /tmp/coord2/timing.lock .venv/bin/python benchmarks/bench_fingerprint.py --cache /tmp/fpbench --part speed
    flock /tmp/coord2/timing.lock .venv/bin/python benchmarks/bench_fingerprint.py --cache /tmp/fpbench --part clustering
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import hashlib
import json
import os
import pickle
import resource
import shutil
import subprocess
import tempfile
import time
from collections import Counter

import numpy as np
import soundfile as sf
from songmill.annotate.audio import decode, resample, to_mono_resampled
from songmill.annotate.base import Track
from songmill.annotate.fingerprint import (
    Edges,
    FingerprintConfig,
    FingerprintStage,
    Postings,
    candidate_pairs,
    cluster,
    is_copy,
    score_pair,
    union_clusters,
)
from songmill.testaudio.synth import PITCH_CLASSES, STYLES, render_track

SR = 44100


# -- the set --------------------------------------------------------------------------------------
def write_audio(path: str, data: np.ndarray, sr: int, **opts) -> None:
    """Written a second at a time: libsndfile's vorbis encoder crashes on one long write."""
    with sf.SoundFile(path, "w", sr, 1 if data.ndim == 1 else data.shape[1], **opts) as f:
        for i in range(0, len(data), sr):
            f.write(data[i : i + sr])


COPIES = (
    "mp3-128k.mp3",
    "vorbis.ogg",
    "opus.opus",
    "22k.flac",
    "48k.wav",
    "quiet.wav",
    "loud.wav",
    "mono.wav",
    "leadtrim.flac",
    "tailtrim.flac",
)


def transforms(
    audio: np.ndarray, lead: float, tail: float
) -> dict[str, tuple[np.ndarray, int, dict]]:
    mp3 = {
        "format": "MP3",
        "subtype": "MPEG_LAYER_III",
        "compression_level": 0.6,
        "bitrate_mode": "CONSTANT",
    }
    return {
        "mp3-128k.mp3": (audio, SR, mp3),
        "vorbis.ogg": (audio, SR, {"format": "OGG", "subtype": "VORBIS"}),
        "opus.opus": (resample(audio, SR, 48000), 48000, {"format": "OGG", "subtype": "OPUS"}),
        "22k.flac": (resample(audio, SR, 22050), 22050, {}),
        "48k.wav": (resample(audio, SR, 48000), 48000, {}),
        "quiet.wav": (audio * 10 ** (-8 / 20), SR, {}),
        "loud.wav": (np.clip(audio * 10 ** (4 / 20), -1, 1), SR, {}),
        "mono.wav": (audio.mean(axis=1), SR, {}),
        "leadtrim.flac": (audio[int(lead * SR) :], SR, {}),
        "tailtrim.flac": (audio[: -int(tail * SR)], SR, {}),
    }


def _with_copies(
    folder: str, rec: str, load_audio, rng: np.random.Generator
) -> list[tuple[str, str]]:
    lead, tail = rng.uniform(1.0, 5.0), rng.uniform(1.0, 5.0)
    paths = [os.path.join(folder, f"{rec}-{name}") for name in COPIES]
    if not all(os.path.exists(p) for p in paths):  # (rendered once, reused from the cache)
        for path, (name, (data, sr, opts)) in zip(
            paths, transforms(load_audio(), lead, tail).items(), strict=True
        ):
            write_audio(
                path + ".part", data, sr, **({"format": name.rsplit(".", 1)[1].upper()} | opts)
            )
            os.replace(path + ".part", path)
    return [(p, rec) for p in paths]


def build_set(
    folder: str, devset: str, songs: int, unrelated: int, seconds: float
) -> list[tuple[str, str]]:
    """(path, recording id) of every file; rendered files are kept in `folder` and reused."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    files = []

    def alt(
        path: str,
    ) -> bool:  # the alt_* subsets (other soundfonts, reverb, room noise): unrelated only
        return os.path.basename(os.path.dirname(path)).startswith("alt_")

    for n, path in enumerate(
        sorted(glob.glob(os.path.join(devset, "*", "*.flac")), key=lambda p: (alt(p), p))
    ):
        rec = "dev-" + os.path.relpath(path, devset).replace("/", "_")[: -len(".flac")]
        files.append((path, rec))
        if n % 2 == 0 and not alt(path):
            files += _with_copies(
                folder, rec, lambda path=path: (lambda a, sr: a[: 60 * sr])(*decode(path)), rng
            )
    specs, rng = [], np.random.default_rng(0)
    for g in range((songs + unrelated + 2) // 3):  # an "artist": one style, tempo and key
        style, tonic = STYLES[g % len(STYLES)], PITCH_CLASSES[int(rng.integers(12))]
        mode, bpm = ("major", "minor")[g % 2], float(rng.integers(84, 150))
        specs += [(style, tonic, mode, bpm, int(rng.integers(2**31))) for _ in range(3)]
    rng.shuffle(specs)
    for n, (style, tonic, mode, bpm, seed) in enumerate(specs[: songs + unrelated]):
        rec = f"syn{n:04d}"
        original = os.path.join(folder, f"{rec}.wav")
        if not os.path.exists(original):
            write_audio(
                original + ".part",
                render_track(bpm, tonic, mode, seconds, seed=seed, style=style),
                SR,
                format="WAV",
            )
            os.replace(original + ".part", original)
        files.append((original, rec))
        if n < songs:
            files += _with_copies(folder, rec, lambda original=original: decode(original)[0], rng)
    return files


def half(rec: str) -> int:
    return hashlib.sha1(rec.encode()).digest()[0] & 1


# -- the alternative: spectral-peak landmarks ------------------------------------------------------
LM_SR, LM_NFFT, LM_HOP = 8000, 512, 128
LM_FPS = LM_SR / LM_HOP  # 62.5 frames per second
LM_PEAKS_PER_S, LM_FANOUT, LM_MAX_DT, LM_MAX_DF = 20, 5, 63, 63


def _max_filter(x: np.ndarray, size: int, axis: int) -> np.ndarray:
    pad = [(0, 0)] * x.ndim
    pad[axis] = (size // 2, size // 2)
    windows = np.lib.stride_tricks.sliding_window_view(
        np.pad(x, pad, constant_values=-np.inf), size, axis=axis
    )
    return windows.max(axis=-1)


def landmarks(mono_8k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(hashes, anchor frames): spectrogram peaks (local maxima over +-8 bins and frames, the
    strongest LM_PEAKS_PER_S per second), each anchor paired with its next LM_FANOUT peaks within
    LM_MAX_DT frames and LM_MAX_DF bins, hashed as (anchor bin, bin gap, frame gap)."""
    if mono_8k.size < LM_NFFT:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    frames = np.lib.stride_tricks.sliding_window_view(mono_8k, LM_NFFT)[::LM_HOP] * np.hanning(
        LM_NFFT
    ).astype(np.float32)
    spec = np.log(np.abs(np.fft.rfft(frames, axis=1))[:, 1:257] + 1e-4)
    local = _max_filter(_max_filter(spec, 17, 0), 17, 1)
    t, f = np.nonzero(spec == local)
    strength = spec[t, f]
    keep = int(LM_PEAKS_PER_S * spec.shape[0] / LM_FPS)
    if t.size > keep:
        top = np.argpartition(-strength, keep)[:keep]
        t, f = t[top], f[top]
    order = np.lexsort((f, t))
    t, f = t[order].astype(np.int64), f[order].astype(np.int64)
    hashes, anchors = [], []
    for k in range(1, LM_FANOUT + 1):
        dt, df = t[k:] - t[:-k], f[k:] - f[:-k]
        ok = (dt >= 1) & (dt <= LM_MAX_DT) & (np.abs(df) <= LM_MAX_DF)
        hashes.append((f[:-k][ok] << 13) | ((df[ok] + LM_MAX_DF) << 6) | dt[ok])
        anchors.append(t[:-k][ok])
    return np.concatenate(hashes), np.concatenate(anchors)


# -- fingerprinting the set ------------------------------------------------------------------------
def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def fingerprint_files(
    files: list[tuple[str, str]],
) -> tuple[list[np.ndarray], list[tuple[np.ndarray, np.ndarray]], dict]:
    """Chromaprint (the stage) and landmark fingerprints of every file, with CPU times."""
    stage = FingerprintStage()
    stage.setup()
    prints, marks = [], []
    times = Counter()
    for path, _ in files:
        t0 = cpu()
        samples, sr = decode(path)
        t1 = cpu()
        track = Track({"track_id": path, "uri": path})
        track._native = (
            samples,
            sr,
        )  # the runner decodes once per batch and shares it the same way
        row = stage.process_track(track)
        t2 = cpu()
        marks.append(
            landmarks(to_mono_resampled(samples, sr, LM_SR)[: int(stage.config.seconds * LM_SR)])
        )
        t3 = cpu()
        times["decode"] += t1 - t0
        times["chromaprint"] += t2 - t1
        times["landmarks"] += t3 - t2
        times["audio_s"] += samples.shape[0] / sr
        prints.append(np.frombuffer(row["fingerprint"], dtype="<u4").astype(np.uint32))
    return prints, marks, dict(times)


def fpcalc_speed(files: list[tuple[str, str]]) -> float:
    audio, t0 = 0.0, children_cpu()
    for path, _ in files:
        out = subprocess.run(
            ["fpcalc", "-raw", "-length", "120", path], capture_output=True, text=True
        )
        if "FINGERPRINT=" not in out.stdout:  # (it exits 3 on a benign end-of-file decode warning)
            raise RuntimeError(f"fpcalc failed on {path}: {out.stderr.strip()}")
        audio += min(sf.info(path).duration, 120.0)
    return audio / (children_cpu() - t0)


# -- scoring ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class Scored:
    """Candidate pairs of one subset with one method's score (and whether they overlap enough)."""

    a: np.ndarray
    b: np.ndarray
    score: np.ndarray
    eligible: np.ndarray


def chromaprint_scores(
    prints: list[np.ndarray], cfg: FingerprintConfig
) -> tuple[Scored, np.ndarray]:
    """Scored candidates (fraction of matching frames) and their 1 - bit error rate."""
    postings = Postings.of(prints, range(len(prints)), cfg)
    a, b, off, _ = candidate_pairs(postings, postings, cfg)
    scores = [
        score_pair(prints[i], prints[j], o, cfg)
        for i, j, o in zip(a.tolist(), b.tolist(), off.tolist(), strict=True)
    ]
    eligible = [
        is_copy(dataclasses.replace(s, matched=1.0), prints[i].size, prints[j].size, cfg)
        for s, i, j in zip(scores, a.tolist(), b.tolist(), strict=True)
    ]
    return Scored(a, b, np.array([s.matched for s in scores]), np.array(eligible, bool)), np.array(
        [s.bit_similarity for s in scores]
    )


def landmark_scores(marks: list[tuple[np.ndarray, np.ndarray]]) -> Scored:
    cfg = FingerprintConfig(max_bucket=64, min_shared=3)
    postings = Postings(
        np.concatenate([h for h, _ in marks]),
        np.concatenate([np.full(h.size, i, np.int64) for i, (h, _) in enumerate(marks)]),
        np.concatenate([t for _, t in marks]),
    )
    a, b, _, votes = candidate_pairs(postings, postings, cfg, frames_per_second=LM_FPS)
    sizes = np.array([h.size for h, _ in marks])
    return Scored(
        a, b, votes / np.maximum(np.minimum(sizes[a], sizes[b]), 1), np.ones(a.size, bool)
    )


def pair_counts(truth: list[str], roots: np.ndarray) -> tuple[int, int, int]:
    """(true positive, false positive, false negative) pairs of a clustering against the truth."""

    def pairs(counter: Counter) -> int:
        return sum(c * (c - 1) // 2 for c in counter.values())

    both = pairs(Counter(zip(truth, roots.tolist(), strict=True)))
    return both, pairs(Counter(roots.tolist())) - both, pairs(Counter(truth)) - both


def evaluate(scored: Scored, truth: list[str], threshold: float) -> dict:
    keep = scored.eligible & (scored.score >= threshold)
    roots = union_clusters(
        len(truth), Edges(scored.a[keep], scored.b[keep], scored.score[keep], int(keep.size))
    )
    tp, fp, fn = pair_counts(truth, roots)
    return {
        "precision": tp / max(tp + fp, 1),
        "recall": tp / max(tp + fn, 1),
        "false_pairs": fp,
        "missed_pairs": fn,
        "true_pairs": tp + fn,
    }


def tune(scored: Scored, truth: list[str]) -> tuple[float, float]:
    """The threshold with the best pair F1 (the middle of the best run of the grid), and that F1."""
    grid = np.round(np.arange(0.02, 0.99, 0.01), 2)
    f1 = []
    for t in grid:
        r = evaluate(scored, truth, t)
        f1.append(2 * r["precision"] * r["recall"] / max(r["precision"] + r["recall"], 1e-9))
    best = np.flatnonzero(np.isclose(f1, max(f1)))
    run = best[
        best - np.arange(best.size) == (best - np.arange(best.size))[0]
    ]  # first contiguous run
    return float(grid[run[run.size // 2]]), float(max(f1))


def separation(scored: Scored, truth: list[str]) -> dict:
    same = np.array(
        [truth[i] == truth[j] for i, j in zip(scored.a.tolist(), scored.b.tolist(), strict=True)],
        bool,
    )
    t, f = scored.score[same & scored.eligible], scored.score[~same & scored.eligible]
    return {
        "true_pairs_min_score": float(t.min()) if t.size else None,
        "true_p1": float(np.percentile(t, 1)) if t.size else None,
        "false_pairs_max_score": float(f.max()) if f.size else None,
        "false_p99_9": float(np.percentile(f, 99.9)) if f.size else None,
    }


def _held_out(files, prints, marks, tune_idx: list[int], test_idx: list[int]) -> dict:
    """Tune on one half, report on the other."""
    out: dict = {"tune_files": len(tune_idx), "test_files": len(test_idx)}
    truth_tune, truth_test = [files[i][1] for i in tune_idx], [files[i][1] for i in test_idx]
    best = None
    for match_bits in (2, 3, 4):
        tuned, _ = chromaprint_scores(
            [prints[i] for i in tune_idx], FingerprintConfig(match_bits=match_bits)
        )
        threshold, f1 = tune(tuned, truth_tune)
        margin = separation(tuned, truth_tune)
        out[f"chromaprint_match_bits_{match_bits}_tune"] = {
            "threshold": threshold,
            "f1": f1,
            **margin,
        }
        gap = (margin["true_pairs_min_score"] or 0) - (margin["false_pairs_max_score"] or 0)
        if best is None or (f1, gap) > best[0]:
            best = ((f1, gap), match_bits, threshold)
    _, match_bits, threshold = best
    cfg = FingerprintConfig(match_bits=match_bits, threshold=threshold)
    tested, bits_test = chromaprint_scores([prints[i] for i in test_idx], cfg)
    out["chromaprint"] = {
        "match_bits": match_bits,
        "threshold": threshold,
        **evaluate(tested, truth_test, threshold),
        **separation(tested, truth_test),
    }
    default = FingerprintConfig()
    shipped, _ = chromaprint_scores([prints[i] for i in test_idx], default)
    out["chromaprint_shipped_defaults"] = {
        "match_bits": default.match_bits,
        "threshold": default.threshold,
        **evaluate(shipped, truth_test, default.threshold),
    }
    previous = Scored(tested.a, tested.b, bits_test, tested.eligible)  # the last session's rule
    out["baseline_bit_error_rate_0.75"] = {
        **evaluate(previous, truth_test, 0.75),
        **separation(previous, truth_test),
    }
    lm_threshold, lm_f1 = tune(landmark_scores([marks[i] for i in tune_idx]), truth_tune)
    lm_test = landmark_scores([marks[i] for i in test_idx])
    out["landmarks"] = {
        "threshold": lm_threshold,
        "tune_f1": lm_f1,
        **evaluate(lm_test, truth_test, lm_threshold),
        **separation(lm_test, truth_test),
    }
    return out


def accuracy(files: list[tuple[str, str]], prints: list[np.ndarray], marks: list) -> dict:
    """Both ways round (tune on half 0, report on half 1, and back), and the two reports summed."""
    out: dict = {"files": len(files), "recordings": len({r for _, r in files})}
    halves = {h: [i for i, (_, r) in enumerate(files) if half(r) == h] for h in (0, 1)}
    folds = {
        f"tune_{t}_test_{1 - t}": _held_out(files, prints, marks, halves[t], halves[1 - t])
        for t in (0, 1)
    }
    out.update(folds)
    for method in (
        "chromaprint",
        "chromaprint_shipped_defaults",
        "baseline_bit_error_rate_0.75",
        "landmarks",
    ):
        tp = sum(f[method]["true_pairs"] - f[method]["missed_pairs"] for f in folds.values())
        fp = sum(f[method]["false_pairs"] for f in folds.values())
        fn = sum(f[method]["missed_pairs"] for f in folds.values())
        out[f"held_out_both_halves_{method}"] = {
            "precision": tp / max(tp + fp, 1),
            "recall": tp / max(tp + fn, 1),
            "false_pairs": fp,
            "missed_pairs": fn,
        }
    out["index_cost_whole_set"] = index_cost(prints, marks)
    return out


def index_cost(prints: list[np.ndarray], marks: list) -> dict:
    """Index entries and CPU seconds of matching + scoring the whole set, per method."""
    t0 = time.process_time()
    chromaprint_scores(prints, FingerprintConfig())
    t1 = time.process_time()
    landmark_scores(marks)
    t2 = time.process_time()
    cfg = FingerprintConfig()
    return {
        "chromaprint_index_entries": int(Postings.of(prints, range(len(prints)), cfg).key.size),
        "landmark_index_entries": int(sum(h.size for h, _ in marks)),
        "chromaprint_match_cpu_s": t1 - t0,
        "landmark_match_cpu_s": t2 - t1,
    }


# -- clustering at scale ---------------------------------------------------------------------------
def realistic_prints(
    files, prints, n: int, rng: np.random.Generator, frames: int = 950
) -> tuple[list[np.ndarray], list[tuple[int, int]]]:
    """n fingerprints of crops of real ones (see the module docstring) and the planted (copy,
    original) pairs."""
    originals = [i for i, (p, r) in enumerate(files) if not os.path.basename(p).startswith(f"{r}-")]
    copies_of: dict[str, list[int]] = {}
    for i, (p, r) in enumerate(files):
        if (
            os.path.basename(p).startswith(f"{r}-") and "trim" not in p
        ):  # aligned copies (the shift trims)
            copies_of.setdefault(r, []).append(i)
    with_copies = [i for i in originals if files[i][1] in copies_of]
    out, planted = [], []
    recipes = []
    for k in range(n):
        pieces, total = [], 0
        while total < frames:
            src = int(rng.choice(with_copies if k < n // 20 else originals))
            length = int(rng.integers(40, 240))  # 5-30 s
            limit = (
                min(prints[c].size for c in copies_of[files[src][1]])
                if k < n // 20
                else prints[src].size
            )
            start = int(rng.integers(0, max(1, limit - length)))
            piece = prints[src][start : start + length]
            pieces.append((src, start, piece.size))
            total += piece.size
        mask = np.uint32(int(rng.integers(0, 2**20)))
        recipes.append((pieces, mask))
        out.append(np.concatenate([prints[s][a : a + m] for s, a, m in pieces])[:frames] ^ mask)
    for k in range(n // 20):  # planted copies of the first n/20: the same crops of a real copy
        pieces, mask = recipes[k]
        parts = []
        for src, start, m in pieces:
            copy = prints[int(rng.choice(copies_of[files[src][1]]))]
            part = copy[start : start + m]
            parts.append(
                np.pad(part, (0, m - part.size), constant_values=0) if part.size < m else part
            )
        shifted = np.concatenate(parts)[:frames] ^ mask
        out[n - n // 20 + k] = shifted[int(rng.integers(0, 41)) :]  # a lead-in trim of up to 5 s
        planted.append((n - n // 20 + k, k))
    return out, planted


def random_prints(
    n: int, rng: np.random.Generator, frames: int = 950
) -> tuple[list[np.ndarray], list[tuple[int, int]]]:
    """Last session's set: uniform random values, 5 % copies with 8 % of bits flipped, shifted."""
    prints = list(rng.integers(0, 2**32, (n, frames), dtype=np.uint64).astype(np.uint32))
    planted = []
    for i in range(n // 20):
        flips = (rng.random((frames, 32)) < 0.08) @ (np.uint64(1) << np.arange(32, dtype=np.uint64))
        prints[n - n // 20 + i] = (prints[i] ^ flips.astype(np.uint32))[int(rng.integers(0, 40)) :]
        planted.append((n - n // 20 + i, i))
    return prints, planted


def key_load(prints: list[np.ndarray], cfg: FingerprintConfig) -> float:
    """Mean number of distinct tracks holding the key of an index entry (how full buckets are)."""
    postings = Postings.of(prints, range(len(prints)), cfg)
    _, per_key = np.unique(
        np.unique(postings.key * len(prints) + postings.owner) // len(prints), return_counts=True
    )
    return float((per_key.astype(float) ** 2).sum() / per_key.sum())


def write_corpus(root: str, prints: list[np.ndarray], start: int = 0) -> list[str]:
    from songmill.annotate.base import config_hash
    from songmill.data_schema.store import Corpus, utcnow

    corpus = Corpus(root)
    cfg, now = FingerprintConfig(), utcnow()
    ids = [hashlib.sha256(str(start + i).encode()).hexdigest() for i in range(len(prints))]
    for s in range(0, len(prints), 20_000):
        chunk = range(s, min(s + 20_000, len(prints)))
        corpus.write(
            "tracks",
            [
                {
                    "track_id": ids[i],
                    "uri": f"/x/{ids[i]}.flac",
                    "codec": "flac",
                    "sample_rate": 44100,
                    "duration_s": 120.0,
                    "created_at": now,
                }
                for i in chunk
            ],
        )
        corpus.write(
            "fingerprints",
            [
                {
                    "track_id": ids[i],
                    "stage_version": 1,
                    "config_hash": config_hash(cfg),
                    "run_id": f"bench-{start}",
                    "created_at": now,
                    "algorithm": "chromaprint-2",
                    "fingerprint": prints[i].astype("<u4").tobytes(),
                    "frames": int(prints[i].size),
                    "seconds": 120.0,
                }
                for i in chunk
            ],
        )
    return ids


def clustering(files, prints, n: int) -> dict:
    from songmill.annotate.fingerprint import update_index
    from songmill.data_schema.store import Corpus

    rng = np.random.default_rng(1)
    real, planted = realistic_prints(files, prints, n, rng)
    new_n = n // 100
    root = tempfile.mkdtemp(prefix="bench-fp-corpus-")
    try:
        ids = write_corpus(root, real[: n - new_n])
        corpus = Corpus(root)
        t0 = time.perf_counter()
        full = update_index(corpus, full=True)
        full_s = time.perf_counter() - t0
        ids += write_corpus(root, real[n - new_n :], start=n - new_n)
        t0 = time.perf_counter()
        incremental = update_index(corpus)
        incremental_s = time.perf_counter() - t0
        cluster_of = {
            r["track_id"]: r["cluster_id"]
            for r in corpus.sql("SELECT track_id, cluster_id FROM near_duplicates").to_pylist()
        }
        found = sum(
            cluster_of.get(ids[c]) is not None and cluster_of.get(ids[c]) == cluster_of.get(ids[o])
            for c, o in planted
        )
        clustered = len(cluster_of)
        t0 = time.perf_counter()
        rebuilt = update_index(corpus, full=True)
        rebuild_s = time.perf_counter() - t0
    finally:
        shutil.rmtree(root, ignore_errors=True)
    random_set, random_planted = random_prints(n, np.random.default_rng(2))
    t0 = time.perf_counter()
    random_found = cluster([str(i) for i in range(n)], random_set, FingerprintConfig())
    random_s = time.perf_counter() - t0
    sample, t0 = 600, time.perf_counter()
    cfg = FingerprintConfig()
    for i in range(sample):  # brute force: every pair, every offset within 5 s (every 8th timed)
        for j in range(i + 1, min(sample, i + 31)):
            max(score_pair(real[i], real[j], off, cfg).matched for off in range(-40, 41, 8))
    pairs_done = sum(min(sample, i + 31) - i - 1 for i in range(sample))
    brute_s = (
        (time.perf_counter() - t0) / pairs_done * (81 / 11 / 3) * n * (n - 1) / 2
    )  # 81 offsets; score_pair tries 3
    return {
        "fingerprints": n,
        "realistic_full_build_s": full_s,
        "full_build": dataclasses.asdict(full),
        "incremental_new": new_n,
        "incremental_build_s": incremental_s,
        "incremental_build": dataclasses.asdict(incremental),
        "full_rebuild_after_s": rebuild_s,
        "full_rebuild_after": dataclasses.asdict(rebuilt),
        "planted_copies": len(planted),
        "planted_found": int(found),
        "tracks_in_clusters": clustered,
        "expected_in_clusters": 2 * len(planted),
        "key_load_realistic": key_load(real, FingerprintConfig()),
        "key_load_uniform_random": key_load(random_set, FingerprintConfig()),
        "baseline_uniform_random_cluster_s": random_s,
        "baseline_uniform_random_candidates": random_found.pairs_scored,
        "baseline_uniform_random_planted_found": int(
            sum(random_found.cluster[c] == random_found.cluster[o] for c, o in random_planted)
        ),
        "brute_force_all_pairs_s_extrapolated": brute_s,
        "speedup_vs_brute_force": brute_s / full_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--cache",
        default=os.path.join(tempfile.gettempdir(), "songmill-fpbench"),
        help="rendered files and fingerprints (kept)",
    )
    parser.add_argument("--devset", default="/tmp/songmill-devset")
    parser.add_argument("--songs", type=int, default=20)
    parser.add_argument("--unrelated", type=int, default=40)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--part", choices=["accuracy", "speed", "clustering", "all"], default="all")
    parser.add_argument("--speed-files", type=int, default=150)
    parser.add_argument("--fingerprints", type=int, default=100_000)
    args = parser.parse_args()
    files = build_set(args.cache, args.devset, args.songs, args.unrelated, args.seconds)
    cached = os.path.join(args.cache, "prints.pkl")  # path -> (Chromaprint, landmarks)
    known = pickle.load(open(cached, "rb")) if os.path.exists(cached) else {}
    missing = [f for f in files if f[0] not in known]
    if missing:
        new_prints, new_marks, _ = fingerprint_files(missing)
        known.update(
            {p: (fp, lm) for (p, _), fp, lm in zip(missing, new_prints, new_marks, strict=True)}
        )
        with open(cached + ".part", "wb") as f:
            pickle.dump(known, f)
        os.replace(cached + ".part", cached)
    prints, marks = [known[p][0] for p, _ in files], [known[p][1] for p, _ in files]
    report: dict = {}
    if args.part in ("accuracy", "all"):
        report["accuracy"] = accuracy(files, prints, marks)
        print(json.dumps(report, indent=1), flush=True)
    if args.part in ("speed", "all"):
        sample = [
            files[i]
            for i in np.random.default_rng(3).choice(
                len(files), min(args.speed_files, len(files)), replace=False
            )
        ]
        _, _, t = fingerprint_files(sample)
        fpcalc = fpcalc_speed(sample)
        report["speed"] = {
            "files": len(sample),
            "audio_s": t["audio_s"],
            "chromaprint_stage_x_realtime_per_core": t["audio_s"] / t["chromaprint"],
            "chromaprint_stage_with_decode_x_realtime_per_core": t["audio_s"]
            / (t["chromaprint"] + t["decode"]),
            "landmarks_x_realtime_per_core": t["audio_s"] / t["landmarks"],
            "landmarks_with_decode_x_realtime_per_core": t["audio_s"]
            / (t["landmarks"] + t["decode"]),
            "baseline_fpcalc_x_realtime_per_core": fpcalc,
        }
        report["speed"]["stage_with_decode_vs_fpcalc"] = (
            report["speed"]["chromaprint_stage_with_decode_x_realtime_per_core"] / fpcalc
        )
        print(json.dumps(report, indent=1), flush=True)
    if args.part in ("clustering", "all"):
        report["clustering"] = clustering(files, prints, args.fingerprints)
        print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
