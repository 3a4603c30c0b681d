"""The fingerprint stage and the near-duplicate index.

Fingerprints are Chromaprint's (libchromaprint through pyacoustid's ctypes binding, in-process:
no `fpcalc` process per track), computed from the track's audio at 11025 Hz mono, the first
`seconds` of it. A raw Chromaprint fingerprint is one 32-bit value per 4096-sample window with a
1/3 hop (~8 per second), each bit the sign of a filtered chroma-energy difference, so a re-encode,
resample, gain change or down-mix flips a few bits and a trim shifts the sequence.

The index finds candidate pairs through an inverted index of the values' top `key_bits` (every
key whose hash falls in a fixed 1/`sample` of the hash space, the same for every track, so copies
share keys), takes the position offset with the most shared keys, and scores the pair at that
offset (+-1 frame) as the fraction of overlapping frames whose values differ in at most
`match_bits` of 32 bits. Pairs at or above `threshold` over enough overlap are joined into
clusters (union-find). Why frames, not the bit error rate: different pieces in one key, tempo and
instrumentation agree on ~60 % of bits overall (chroma is correlated), which left little room
between them and trimmed copies (~90 %); but they almost never agree frame by frame (<= 7 % of
frames, 99th percentile ~1 %), while copies do on >= 75 % (benchmarks/bench_fingerprint.py).

`update_index` is incremental: the keys of indexed fingerprints are kept (`fingerprint_index`),
so new fingerprints are matched against them, only the candidate tracks' fingerprints are read
back, and the new edges are merged into the clusters of the last build. `update_index(...,
full=True)` (`songmill dedup --full`) rebuilds from every fingerprint; a change of index settings
or of an indexed fingerprint does so on its own.
"""

from __future__ import annotations

import ctypes.util
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from songmill.annotate.base import RUNTIME, Stage, StageConfig, StageUnavailable, Track
from songmill.data_schema.store import Corpus, new_run_id, utcnow

SAMPLE_RATE = 11025
FRAMES_PER_SECOND = SAMPLE_RATE / 1365.0  # Chromaprint: 4096-sample frames, hop 4096/3


@dataclass
class FingerprintConfig(StageConfig):
    seconds: float = 120.0  # fingerprint this much from the start (Chromaprint's default)
    algorithm: int = 2  # Chromaprint's default algorithm (CHROMAPRINT_ALGORITHM_TEST2)
    # Index settings: they decide the clusters, not the fingerprints, so they stay out of the
    # stage's config hash (changing one rebuilds the index, it does not re-fingerprint).
    threshold: float = field(
        default=0.56, metadata=RUNTIME
    )  # min fraction of matching frames (tuned: bench)
    match_bits: int = field(
        default=3, metadata=RUNTIME
    )  # a frame matches: <= this many bits differ
    min_overlap_s: float = field(default=20.0, metadata=RUNTIME)  # (or 60 % of the shorter track)
    max_offset_s: float = field(default=12.0, metadata=RUNTIME)  # trims / lead-ins up to this long
    key_bits: int = field(default=24, metadata=RUNTIME)  # index key: the values' top bits
    sample: int = field(default=4, metadata=RUNTIME)  # index 1/sample of the keys (by hash)
    max_bucket: int = field(default=64, metadata=RUNTIME)  # keys of more tracks say nothing (tones)
    min_shared: int = field(
        default=3, metadata=RUNTIME
    )  # candidates share this many keys at one offset


INDEX_SETTINGS = (
    "algorithm",
    "threshold",
    "match_bits",
    "min_overlap_s",
    "max_offset_s",
    "key_bits",
    "sample",
    "max_bucket",
    "min_shared",
)
KEY_SETTINGS = ("algorithm", "key_bits", "sample")  # what the stored keys depend on


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
        raise StageUnavailable(
            f"pyacoustid is not installed ({exc}): `pip install pyacoustid`"
        ) from None
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
        """Match the run's new fingerprints against the index and merge them into the clusters."""
        update_index(corpus, self.config)


# -- matching -------------------------------------------------------------------------------------
def index_keys(values: np.ndarray, cfg: FingerprintConfig) -> tuple[np.ndarray, np.ndarray]:
    """(keys, positions) a fingerprint is indexed under: the top `key_bits` of each value, where
    a hash of the key falls in 1/`sample` of the hash space. The choice depends on the key alone
    (copies keep the same ones); a hash, because Chromaprint's bits are far from uniform (a key
    bit pattern like `k % 4 == 0` can be absent from a whole track)."""
    key = (np.asarray(values, np.uint32) >> np.uint32(32 - cfg.key_bits)).astype(np.uint32)
    mixed = (key * np.uint32(0x9E3779B1)) >> np.uint32(20)  # Knuth's multiplicative hash, top bits
    positions = np.flatnonzero(mixed % np.uint32(cfg.sample) == 0)
    return key[positions].astype(np.int64), positions.astype(np.int64)


@dataclass
class Postings:
    """Index entries, one per (track, key occurrence): parallel arrays."""

    key: np.ndarray
    owner: np.ndarray  # track number
    position: np.ndarray

    @classmethod
    def of(
        cls, prints: Sequence[np.ndarray], owners: Sequence[int], cfg: FingerprintConfig
    ) -> Postings:
        if not len(prints):
            return cls.empty()
        sizes = np.array([p.size for p in prints], np.int64)
        values = np.concatenate(
            [np.asarray(p, np.uint32) for p in prints]
        )  # all at once: no per-track numpy calls
        owner = np.repeat(np.asarray(owners, np.int64), sizes)
        position = np.arange(values.size, dtype=np.int64) - np.repeat(
            np.cumsum(sizes) - sizes, sizes
        )
        key, chosen = index_keys(values, cfg)
        return cls(key, owner[chosen], position[chosen])

    @classmethod
    def empty(cls) -> Postings:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))

    def __add__(self, other: Postings) -> Postings:
        return Postings(
            *(
                np.concatenate([getattr(self, f), getattr(other, f)])
                for f in ("key", "owner", "position")
            )
        )


def candidate_pairs(
    query: Postings,
    index: Postings,
    cfg: FingerprintConfig,
    frames_per_second: float = FRAMES_PER_SECOND,
    chunk: int = 2_000_000,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(track a, track b, offset, votes) candidates with a < b: a query posting and an index
    posting of another track share a key; per pair the offset (a's position - b's position) with
    the most shared keys (votes, counting the neighbouring offsets too), kept when >= min_shared. `index` must hold `query`'s postings too
    when pairs within the query are wanted (a full build passes the same postings twice)."""
    order = np.argsort(index.key, kind="stable")
    ikey, iown, ipos = index.key[order], index.owner[order], index.position[order]
    same = query is index
    # bucket size in distinct tracks (a copy-rich recording repeats keys without being a tone)
    distinct = (
        np.r_[True, (ikey[1:] != ikey[:-1]) | (iown[1:] != iown[:-1])]
        if ikey.size
        else np.zeros(0, bool)
    )
    ukey, first = np.unique(ikey, return_index=True)
    tracks_per_key = (
        np.add.reduceat(distinct.astype(np.int64), first) if ukey.size else np.zeros(0, np.int64)
    )
    common = ukey[tracks_per_key > cfg.max_bucket]
    max_offset = int(cfg.max_offset_s * frames_per_second)
    width = 2 * max_offset + 1
    n_tracks = int(max(index.owner.max(initial=-1), query.owner.max(initial=-1))) + 1
    in_query = np.zeros(n_tracks, bool)
    in_query[query.owner] = True
    if same:
        qkey, qown, qpos = ikey, iown, ipos
    else:
        qorder = np.argsort(query.key, kind="stable")  # sorted needles: searchsorted stays in cache
        qkey, qown, qpos = query.key[qorder], query.owner[qorder], query.position[qorder]
    keep = ~np.isin(qkey, common, assume_unique=False)
    qkey, qown, qpos = qkey[keep], qown[keep], qpos[keep]
    lo, hi = np.searchsorted(ikey, qkey, "left"), np.searchsorted(ikey, qkey, "right")
    codes = []
    start = 0
    while start < qkey.size:  # bounded memory: expand about `chunk` matches at a time
        sizes = hi[start:] - lo[start:]
        stop = start + max(1, int(np.searchsorted(np.cumsum(sizes), chunk)))
        n = hi[start:stop] - lo[start:stop]
        rep = np.repeat(np.arange(start, stop), n)
        within = np.arange(rep.size) - np.repeat(np.cumsum(n) - n, n)
        j = lo[rep] + within
        a, b = qown[rep], iown[j]
        offset = qpos[rep] - ipos[j]
        # a pair of two query tracks is met from both sides: count it from its smaller one only
        ok = (a < b) | ((a > b) & ~in_query[b])
        swap = a > b
        a, b, offset = np.where(swap, b, a), np.where(swap, a, b), np.where(swap, -offset, offset)
        ok &= np.abs(offset) <= max_offset
        codes.append((a[ok] * n_tracks + b[ok]) * width + (offset[ok] + max_offset))
        start = stop
    if not codes or not sum(c.size for c in codes):
        return (
            np.zeros(0, np.int64),
            np.zeros(0, np.int64),
            np.zeros(0, np.int64),
            np.zeros(0, np.int64),
        )
    code, count = np.unique(np.concatenate(codes), return_counts=True)
    pair, offset = np.divmod(code, width)
    # a trim by a fraction of a frame spreads the hits over two neighbouring offsets: count both
    count = (
        count
        + _count_at(code, count, code - 1, offset > 0)
        + _count_at(code, count, code + 1, offset < width - 1)
    )
    offset -= max_offset
    # per pair: the offset with the most hits
    order = np.lexsort((-count, pair))
    pair, offset, count = pair[order], offset[order], count[order]
    first = np.r_[True, pair[1:] != pair[:-1]]
    chosen = first & (count >= cfg.min_shared)
    a, b = np.divmod(pair[chosen], n_tracks)
    return a, b, offset[chosen], count[chosen]


def _count_at(
    code: np.ndarray, count: np.ndarray, wanted: np.ndarray, valid: np.ndarray
) -> np.ndarray:
    """count[code == wanted] per element (0 where absent or not `valid`); `code` is sorted."""
    at = np.minimum(np.searchsorted(code, wanted), code.size - 1)
    return np.where(valid & (code[at] == wanted), count[at], 0)


@dataclass
class PairScore:
    matched: float  # fraction of overlapping frames with <= match_bits differing bits
    bit_similarity: float  # 1 - bit error rate over the overlap
    overlap: int  # frames


def score_pair(a: np.ndarray, b: np.ndarray, offset: int, cfg: FingerprintConfig) -> PairScore:
    """a[i] vs b[i - offset] at offset-1..offset+1, the best of the three."""
    best = PairScore(0.0, 0.0, 0)
    for off in (offset - 1, offset, offset + 1):
        x, y = (a[off:], b) if off >= 0 else (a, b[-off:])
        n = min(x.size, y.size)
        if n <= 0:
            continue
        bits = np.bitwise_count(x[:n] ^ y[:n])
        matched = float(np.count_nonzero(bits <= cfg.match_bits)) / n
        if matched > best.matched:
            best = PairScore(matched, 1.0 - float(bits.sum()) / (32.0 * n), n)
    return best


def is_copy(score: PairScore, frames_a: int, frames_b: int, cfg: FingerprintConfig) -> bool:
    """Enough frames agree over a long enough overlap (most of the shorter track when short)."""
    need = min(int(cfg.min_overlap_s * FRAMES_PER_SECOND), int(0.6 * min(frames_a, frames_b)))
    return score.overlap >= need and score.matched >= cfg.threshold


@dataclass
class Edges:
    a: np.ndarray
    b: np.ndarray
    similarity: np.ndarray
    candidates: int


def find_edges(
    prints: Sequence[np.ndarray], candidates: tuple[np.ndarray, ...], cfg: FingerprintConfig
) -> Edges:
    """The candidate pairs (candidate_pairs) that score as copies; `prints[i]` is track number
    i's fingerprint (only candidates' fingerprints are needed: the others may be empty)."""
    a, b, offsets, _ = candidates
    keep_a, keep_b, sims = [], [], []
    for i, j, off in zip(a.tolist(), b.tolist(), offsets.tolist(), strict=True):
        score = score_pair(prints[i], prints[j], off, cfg)
        if is_copy(score, prints[i].size, prints[j].size, cfg):
            keep_a.append(i)
            keep_b.append(j)
            sims.append(score.matched)
    return Edges(
        np.array(keep_a, np.int64), np.array(keep_b, np.int64), np.array(sims, float), int(a.size)
    )


@dataclass
class Clusters:
    track_ids: list[str]
    cluster: np.ndarray  # per track: index of its cluster's root
    best_similarity: np.ndarray  # per track: similarity to its closest cluster member (0: none)
    pairs_scored: int
    edges: int


def union_clusters(n: int, edges: Edges, linked: Sequence[tuple[int, int]] = ()) -> np.ndarray:
    """Per track its cluster's root (the smallest member number), from edges and known links."""
    parent = np.arange(n)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in [*zip(edges.a.tolist(), edges.b.tolist(), strict=True), *linked]:
        ri, rj = root(i), root(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    return np.array([root(i) for i in range(n)], dtype=np.int64)


def cluster(
    track_ids: Sequence[str], prints: Sequence[np.ndarray], cfg: FingerprintConfig
) -> Clusters:
    """Cluster fingerprints from scratch (all against all)."""
    postings = Postings.of(prints, range(len(prints)), cfg)
    edges = find_edges(prints, candidate_pairs(postings, postings, cfg), cfg)
    best = np.zeros(len(track_ids))
    np.maximum.at(best, edges.a, edges.similarity)
    np.maximum.at(best, edges.b, edges.similarity)
    return Clusters(
        list(track_ids),
        union_clusters(len(track_ids), edges),
        best,
        edges.candidates,
        int(edges.a.size),
    )


# -- the index in the corpus ----------------------------------------------------------------------
@dataclass
class IndexBuild:
    index_id: str
    mode: str  # "full" or "incremental"
    fingerprints: int  # indexed after this build
    new_fingerprints: int  # matched in this build
    candidate_pairs: int
    edges: int
    clustered_tracks: int


def _settings(cfg: FingerprintConfig | dict, names: Sequence[str] = INDEX_SETTINGS) -> str:
    get = cfg.get if isinstance(cfg, dict) else lambda k: getattr(cfg, k)
    return json.dumps({k: get(k) for k in names}, sort_keys=True)


def _algorithm(cfg: FingerprintConfig) -> str:
    return f"chromaprint-{cfg.algorithm}"


def _prints_of(
    corpus: Corpus, track_ids: Sequence[str] | None, algorithm: str
) -> dict[str, np.ndarray]:
    """Current fingerprints of these tracks (all when None)."""
    con = corpus.connect()
    try:
        query = "SELECT track_id, fingerprint FROM fingerprints WHERE algorithm = ?"
        if track_ids is not None:
            con.register(
                "wanted_ids", pa.table({"track_id": pa.array(list(track_ids), pa.string())})
            )
            query += " AND track_id IN (SELECT track_id FROM wanted_ids)"
        table = con.sql(query, params=[algorithm]).to_arrow_table()
    finally:
        con.close()
    ids, blobs = table.column("track_id").to_pylist(), table.column("fingerprint").to_pylist()
    return {
        t: np.frombuffer(f, dtype="<u4").astype(np.uint32) for t, f in zip(ids, blobs, strict=True)
    }


def _last_build(corpus: Corpus) -> dict[str, Any] | None:
    rows = corpus.sql("SELECT * FROM dup_index_builds ORDER BY index_id DESC LIMIT 1").to_pylist()
    return rows[0] if rows else None


def update_index(
    corpus: Corpus, cfg: FingerprintConfig | None = None, full: bool = False
) -> IndexBuild:
    """Bring the near-duplicate clusters up to date with the current fingerprints: incrementally
    (new fingerprints against the stored keys) or, when `full`, when the index settings changed,
    or when an indexed fingerprint was replaced, from every fingerprint. Every build writes its
    whole cluster set and a `dup_index_builds` row (also when it finds no clusters, so the
    `near_duplicates` view never shows an earlier build's clusters)."""
    cfg = cfg or FingerprintConfig()
    algorithm = _algorithm(cfg)
    last = _last_build(corpus)
    state = corpus.sql(
        """SELECT f.track_id, f.run_id, i.fingerprint_run_id FROM fingerprints f
           LEFT JOIN fingerprint_index i ON i.track_id = f.track_id AND i.algorithm = f.algorithm
           WHERE f.algorithm = ?""",
        [algorithm],
    ).to_pylist()
    new = [r for r in state if r["fingerprint_run_id"] != r["run_id"]]
    replaced = any(r["fingerprint_run_id"] is not None for r in new)
    if full or last is None or last["settings"] != _settings(cfg) or replaced:
        return _full_build(corpus, cfg, state, last)
    now, index_id = _new_index_id()
    new_ids = sorted(r["track_id"] for r in new)
    new_prints = _prints_of(corpus, new_ids, algorithm) if new_ids else {}
    new_ids = [t for t in new_ids if t in new_prints]
    # the stored keys these fingerprints share (a scan of the keys lists only, not the prints)
    query_postings = Postings.of([new_prints[t] for t in new_ids], range(len(new_ids)), cfg)
    with corpus.connect() as con:
        con.register(
            "query_keys", pa.table({"key": pa.array(np.unique(query_postings.key), pa.int64())})
        )
        stored = (
            con.sql(
                """SELECT track_id, key, position FROM (
                 SELECT track_id, unnest(keys) AS key, unnest(positions) AS position
                 FROM fingerprint_index WHERE algorithm = ?)
               WHERE key IN (SELECT key FROM query_keys)""",
                params=[algorithm],
            ).to_arrow_table()
            if new_ids
            else pa.table(
                {
                    "track_id": pa.array([], pa.string()),
                    "key": pa.array([], pa.int64()),
                    "position": pa.array([], pa.int64()),
                }
            )
        )
    old_ids = sorted(set(stored.column("track_id").to_pylist()))
    number = {t: i for i, t in enumerate(new_ids + old_ids)}
    old_postings = Postings(
        np.asarray(stored.column("key").to_numpy(zero_copy_only=False), np.int64),
        np.array([number[t] for t in stored.column("track_id").to_pylist()], np.int64),
        np.asarray(stored.column("position").to_numpy(zero_copy_only=False), np.int64),
    )
    # candidates first, then only their stored fingerprints are read
    candidates = candidate_pairs(query_postings, query_postings + old_postings, cfg)
    a, b = candidates[0], candidates[1]
    needed = sorted({(new_ids + old_ids)[i] for i in np.r_[a, b].tolist()} - set(new_ids))
    old_prints = _prints_of(corpus, needed, algorithm) if needed else {}
    empty = np.zeros(0, np.uint32)
    prints = [new_prints[t] for t in new_ids] + [old_prints.get(t, empty) for t in old_ids]
    edges = find_edges(prints, candidates, cfg)
    # merge with the last build's clusters
    previous = corpus.sql(
        "SELECT track_id, cluster_id, similarity FROM dup_clusters WHERE index_id = ?",
        [last["index_id"]],
    ).to_pylist()
    ids = new_ids + old_ids
    for r in previous:
        for t in (r["track_id"], r["cluster_id"]):
            if t not in number:
                number[t] = len(ids)
                ids.append(t)
    best = np.zeros(len(ids))
    for r in previous:
        best[number[r["track_id"]]] = r["similarity"] or 0.0
    np.maximum.at(best, edges.a, edges.similarity)
    np.maximum.at(best, edges.b, edges.similarity)
    linked = [(number[r["track_id"]], number[r["cluster_id"]]) for r in previous]
    roots = union_clusters(len(ids), edges, linked)
    build = IndexBuild(
        index_id,
        "incremental",
        int(last["fingerprints"]) + len(new_ids) if last else len(new_ids),
        len(new_ids),
        edges.candidates,
        int(edges.a.size),
        0,
    )
    _write_build(corpus, cfg, build, ids, roots, best, now)
    _write_keys(
        corpus, cfg, new_ids, new_prints, {r["track_id"]: r["run_id"] for r in new}, index_id, now
    )
    return build


def _new_index_id() -> tuple[Any, str]:
    """(now, an index id that sorts by time)."""
    now = utcnow()
    return now, f"{now:%Y%m%dT%H%M%S%f}-{new_run_id()[-8:]}"


def _full_build(
    corpus: Corpus, cfg: FingerprintConfig, state: list[dict], last: dict | None
) -> IndexBuild:
    algorithm = _algorithm(cfg)
    now, index_id = _new_index_id()
    by_id = _prints_of(corpus, None, algorithm)
    ids = sorted(by_id)
    prints = [by_id[t] for t in ids]
    postings = Postings.of(prints, range(len(ids)), cfg)
    edges = find_edges(prints, candidate_pairs(postings, postings, cfg), cfg)
    best = np.zeros(len(ids))
    np.maximum.at(best, edges.a, edges.similarity)
    np.maximum.at(best, edges.b, edges.similarity)
    roots = union_clusters(len(ids), edges)
    build = IndexBuild(index_id, "full", len(ids), len(ids), edges.candidates, int(edges.a.size), 0)
    _write_build(corpus, cfg, build, ids, roots, best, now)
    keys_changed = last is None or _settings(
        json.loads(last["settings"]), KEY_SETTINGS
    ) != _settings(cfg, KEY_SETTINGS)
    run_of = {r["track_id"]: r["run_id"] for r in state}
    stale = [r["track_id"] for r in state if keys_changed or r["fingerprint_run_id"] != r["run_id"]]
    _write_keys(corpus, cfg, [t for t in stale if t in by_id], by_id, run_of, index_id, now)
    return build


def _write_build(
    corpus: Corpus,
    cfg: FingerprintConfig,
    build: IndexBuild,
    ids: list[str],
    roots: np.ndarray,
    best: np.ndarray,
    now,
) -> None:
    """Every cluster of this build, then the build's row (the view shows the newest build)."""
    members: dict[int, list[int]] = {}
    for i, r in enumerate(roots.tolist()):
        members.setdefault(r, []).append(i)
    groups = [g for g in members.values() if len(g) > 1]
    clustered = sorted({ids[i] for g in groups for i in g})
    quality = {}
    if clustered:
        con = corpus.connect()
        try:
            con.register("clustered_ids", pa.table({"track_id": pa.array(clustered, pa.string())}))
            quality = {
                r["track_id"]: r
                for r in con.sql(
                    """SELECT track_id, codec, sample_rate, duration_s, bit_depth FROM tracks
                   WHERE track_id IN (SELECT track_id FROM clustered_ids)"""
                )
                .to_arrow_table()
                .to_pylist()
            }
        finally:
            con.close()
    out = []
    for group in groups:
        canonical = max(group, key=lambda i: _quality(quality.get(ids[i], {"track_id": ids[i]})))
        cluster_id = min(ids[i] for i in group)
        for i in group:
            out.append(
                {
                    "track_id": ids[i],
                    "cluster_id": cluster_id,
                    "canonical_track_id": ids[canonical],
                    "similarity": 1.0 if i == canonical else float(best[i]),
                    "index_id": build.index_id,
                    "algorithm": _algorithm(cfg),
                    "threshold": cfg.threshold,
                    "created_at": now,
                }
            )
    build.clustered_tracks = len(out)
    corpus.write("dup_clusters", out)
    corpus.write(
        "dup_index_builds",
        [
            {
                **build.__dict__,
                "algorithm": _algorithm(cfg),
                "settings": _settings(cfg),
                "created_at": now,
            }
        ],
    )


def _write_keys(
    corpus: Corpus,
    cfg: FingerprintConfig,
    ids: Sequence[str],
    prints: dict[str, np.ndarray],
    run_of: dict[str, str],
    index_id: str,
    now,
) -> None:
    """The stored keys of newly indexed fingerprints (written last: a build killed before this
    point leaves them new, and the next build matches them again)."""
    rows = []
    for t in ids:
        keys, positions = index_keys(prints[t], cfg)
        rows.append(
            {
                "track_id": t,
                "fingerprint_run_id": run_of[t],
                "algorithm": _algorithm(cfg),
                "keys": keys.astype(np.int32),
                "positions": positions.astype(np.int32),
                "index_id": index_id,
                "created_at": now,
            }
        )
    for start in range(0, len(rows), 50_000):
        corpus.write("fingerprint_index", rows[start : start + 50_000])


def write_index(corpus: Corpus, cfg: FingerprintConfig | None = None) -> int:
    """A full rebuild; returns the number of tracks that have a near duplicate."""
    return update_index(corpus, cfg, full=True).clustered_tracks


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
