"""The fingerprint stage and the near-duplicate index.

Fingerprints are Chromaprint's (libchromaprint through pyacoustid's ctypes binding, in-process:
no `fpcalc` process per track), computed from the track's audio at 11025 Hz mono, the first
`seconds` of it. A raw Chromaprint fingerprint is one 32-bit value per 4096-sample window with a
1/3 hop (~8 per second), each bit the sign of a filtered chroma-energy difference, so a re-encode,
resample, gain change or down-mix flips a few bits and a trim shifts the sequence.

The index (`build_index`, run after the stage writes rows) finds candidate pairs through an
inverted index of the values' top bits (every value whose key falls in a fixed 1/`sample` of the
key space, the same for every track, so copies share keys), takes the most common position
offset of each candidate pair's shared keys, scores the pair as 1 - bit error rate over the
overlap at that offset (+-1 frame), and joins pairs above `threshold` into clusters
(union-find). Different songs in the same tempo, key and instrumentation score near 0.5 (random
bits), copies of one recording well above 0.8 (measured in benchmarks/bench_fingerprint.py).
"""

from __future__ import annotations

import ctypes.util
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from songmill.annotate.base import Stage, StageConfig, StageUnavailable, Track

if TYPE_CHECKING:
    from songmill.data_schema.store import Corpus

SAMPLE_RATE = 11025
FRAMES_PER_SECOND = SAMPLE_RATE / 1365.0  # Chromaprint: 4096-sample frames, hop 4096/3


@dataclass
class FingerprintConfig(StageConfig):
    seconds: float = 120.0  # fingerprint this much from the start (Chromaprint's default)
    algorithm: int = 2  # Chromaprint's default algorithm (CHROMAPRINT_ALGORITHM_TEST2)
    threshold: float = 0.75  # minimum similarity (1 - bit error rate) of two copies
    min_overlap_s: float = 20.0  # copies overlap at least this long (or 60 % of the shorter one)
    max_offset_s: float = 12.0  # trims / lead-ins up to this long are matched
    key_bits: int = 24  # index key: the values' top bits
    sample: int = 4  # index every value whose key % sample == 0 (the same keys for every track)
    max_bucket: int = 64  # keys held more often than this say nothing (silence, tones)
    min_shared: int = 3  # candidate pairs share at least this many (key, offset) hits


def _chromaprint():
    """pyacoustid's binding to libchromaprint (Debian: libchromaprint1 / libchromaprint-tools)."""
    if ctypes.util.find_library("chromaprint") is None:
        raise StageUnavailable(
            "libchromaprint is not installed: `apt-get install libchromaprint-tools` (Debian) or "
            "`brew install chromaprint`, then re-run annotate"
        )
    try:
        import chromaprint
    except ImportError as exc:
        raise StageUnavailable(f"pyacoustid is not installed ({exc}): `pip install pyacoustid`") from None
    return chromaprint


def fingerprint(samples: np.ndarray, algorithm: int = 2) -> np.ndarray:
    """Raw Chromaprint fingerprint (uint32 values) of mono float audio at 11025 Hz."""
    chromaprint = _chromaprint()
    pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
    fp = chromaprint.Fingerprinter(algorithm - 1)  # the binding counts algorithms from 0
    fp.start(SAMPLE_RATE, 1)
    fp.feed(pcm)
    raw, _ = chromaprint.decode_fingerprint(fp.finish())
    return np.asarray(raw, dtype=np.int64).astype(np.uint32)


class FingerprintStage(Stage):
    name = "fingerprint"
    version = 1
    table = "fingerprints"
    config_class = FingerprintConfig

    def setup(self) -> None:
        _chromaprint()

    def process_track(self, track: Track) -> dict[str, Any]:
        cfg = self.config
        audio, _ = track.audio(SAMPLE_RATE, mono=True)
        audio = audio[: int(cfg.seconds * SAMPLE_RATE)]
        if audio.size < SAMPLE_RATE * 3:
            raise ValueError(f"too short to fingerprint ({audio.size / SAMPLE_RATE:.1f} s < 3 s)")
        values = fingerprint(audio, cfg.algorithm)
        return {
            "algorithm": f"chromaprint-{cfg.algorithm}",
            "fingerprint": values.astype("<u4").tobytes(),
            "frames": int(values.size),
            "seconds": audio.size / SAMPLE_RATE,
        }

    def after_run(self, corpus: Corpus) -> None:
        """Rebuild the near-duplicate clusters once the run's fingerprints are written."""
        write_index(corpus, self.config)


# -- the index ------------------------------------------------------------------------------------
@dataclass
class Clusters:
    track_ids: list[str]
    cluster: np.ndarray  # per track: index of its cluster's root
    best_similarity: np.ndarray  # per track: similarity to its closest cluster member (0: none)
    pairs_scored: int
    edges: int


def _similarity(a: np.ndarray, b: np.ndarray, offset: int, min_overlap: int) -> float:
    """1 - bit error rate of a[i] vs b[i - offset] over their overlap (0 if too short)."""
    if offset >= 0:
        x, y = a[offset:], b
    else:
        x, y = a, b[-offset:]
    n = min(x.size, y.size)
    if n < min_overlap:
        return 0.0
    return 1.0 - float(np.bitwise_count(x[:n] ^ y[:n]).sum()) / (32.0 * n)


def candidate_pairs(prints: Sequence[np.ndarray], cfg: FingerprintConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(track a, track b, offset) candidates: pairs sharing >= min_shared index keys at one
    position offset (a's position - b's position), the most common offset per pair."""
    shift = 32 - cfg.key_bits
    keys, owners, positions = [], [], []
    for i, fp in enumerate(prints):
        k = (fp >> np.uint32(shift)).astype(np.int64)
        pos = np.nonzero(k % cfg.sample == 0)[0]
        keys.append(k[pos])
        owners.append(np.full(pos.size, i, np.int64))
        positions.append(pos.astype(np.int64))
    if not keys:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    key = np.concatenate(keys)
    owner = np.concatenate(owners)
    position = np.concatenate(positions)
    order = np.lexsort((position, owner, key))
    key, owner, position = key[order], owner[order], position[order]
    # drop keys held by too many tracks (their runs are long): they would make pairs of everything
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    sizes = np.diff(np.r_[starts, key.size])
    keep = np.repeat(sizes <= cfg.max_bucket, sizes)
    key, owner, position = key[keep], owner[keep], position[keep]
    largest = int(sizes[sizes <= cfg.max_bucket].max()) if keep.any() else 0
    max_offset = int(cfg.max_offset_s * FRAMES_PER_SECOND)
    n = len(prints)
    codes = []
    for d in range(1, min(largest, key.size)):  # entries d apart in the sorted keys share a key
        same = (key[d:] == key[:-d]) & (owner[d:] != owner[:-d])
        i = np.flatnonzero(same)
        a, b = owner[i], owner[i + d]
        pa_, pb = position[i], position[i + d]
        swap = a > b
        a, b = np.where(swap, b, a), np.where(swap, a, b)
        offset = np.where(swap, pb - pa_, pa_ - pb)
        ok = np.abs(offset) <= max_offset
        codes.append(((a[ok] * n + b[ok]) * (2 * max_offset + 1)) + (offset[ok] + max_offset))
    if not codes:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    code, count = np.unique(np.concatenate(codes), return_counts=True)
    pair, offset = np.divmod(code, 2 * max_offset + 1)
    offset -= max_offset
    # per pair: the offset with the most hits, and the pair's total
    order = np.lexsort((-count, pair))
    pair, offset, count = pair[order], offset[order], count[order]
    first = np.r_[True, pair[1:] != pair[:-1]]
    totals = np.add.reduceat(count, np.flatnonzero(first))
    best_pair, best_offset = pair[first], offset[first]
    chosen = totals >= cfg.min_shared
    a, b = np.divmod(best_pair[chosen], n)
    return a, b, best_offset[chosen]


def cluster(track_ids: Sequence[str], prints: Sequence[np.ndarray], cfg: FingerprintConfig) -> Clusters:
    a, b, offsets = candidate_pairs(prints, cfg)
    parent = np.arange(len(track_ids))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    best = np.zeros(len(track_ids))
    min_overlap = int(cfg.min_overlap_s * FRAMES_PER_SECOND)
    edges = 0
    for i, j, off in zip(a.tolist(), b.tolist(), offsets.tolist(), strict=True):
        # short tracks: most of the shorter one must overlap instead
        need = min(min_overlap, int(0.6 * min(prints[i].size, prints[j].size)))
        sim = max(_similarity(prints[i], prints[j], off + d, need) for d in (-1, 0, 1))
        if sim < cfg.threshold:
            continue
        edges += 1
        best[i], best[j] = max(best[i], sim), max(best[j], sim)
        ri, rj = root(i), root(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    return Clusters(list(track_ids), np.array([root(i) for i in range(len(track_ids))]), best, int(a.size), edges)


def write_index(corpus: Corpus, cfg: FingerprintConfig | None = None) -> int:
    """Cluster every current fingerprint and write the clusters as a new index build. Returns the
    number of tracks that have a near duplicate."""
    from songmill.data_schema.store import new_run_id, utcnow

    cfg = cfg or FingerprintConfig()
    algorithm = f"chromaprint-{cfg.algorithm}"
    rows = corpus.sql(
        """SELECT f.track_id, f.fingerprint, t.codec, t.sample_rate, t.duration_s, t.bit_depth
           FROM fingerprints f JOIN tracks t USING (track_id) WHERE f.algorithm = ? ORDER BY f.track_id""",
        [algorithm],
    ).to_pylist()
    ids = [r["track_id"] for r in rows]
    prints = [np.frombuffer(r["fingerprint"], dtype="<u4").astype(np.uint32) for r in rows]
    found = cluster(ids, prints, cfg)
    members: dict[int, list[int]] = {}
    for i, r in enumerate(found.cluster.tolist()):
        members.setdefault(r, []).append(i)
    now, index_id = utcnow(), f"{utcnow():%Y%m%dT%H%M%S%f}-{new_run_id()[-8:]}"
    out = []
    for group in members.values():
        if len(group) < 2:
            continue
        canonical = max(group, key=lambda i: _quality(rows[i]))
        cluster_id = min(ids[i] for i in group)
        for i in group:
            out.append({
                "track_id": ids[i], "cluster_id": cluster_id, "canonical_track_id": ids[canonical],
                "similarity": 1.0 if i == canonical else float(found.best_similarity[i]),
                "index_id": index_id, "algorithm": algorithm, "threshold": cfg.threshold, "created_at": now,
            })
    corpus.write("dup_clusters", out)  # (a build with no clusters writes nothing: see README)
    return len(out)


LOSSLESS = ("flac", "pcm", "alac", "wav", "aiff", "wavpack")


def _quality(row: dict[str, Any]) -> tuple:
    """Which copy of a recording to keep: lossless first, then rate, length, depth, then id."""
    codec = (row.get("codec") or "").lower()
    return (
        any(codec.startswith(c) for c in LOSSLESS),
        row.get("sample_rate") or 0,
        row.get("duration_s") or 0.0,
        row.get("bit_depth") or 0,
        row["track_id"],
    )
