"""The lyrics database at scale: build, persist and query the LSH index over 100 000 lyrics.

    .venv/bin/python benchmarks/bench_lyrics_lsh.py [--lyrics 100000] [--queries 300] [--threshold 0.15]

Lyrics are generated (testaudio/sung.py) and phonemized word by word from an espeak-ng lookup
of the vocabulary (phonemizing 100 000 whole lyrics through espeak-ng would take most of the
time budget and does not change what the index does). They go through the real path: Parquet
parts in a corpus, `LyricsDB.index()` building and pickling the index, reopening it. Queries are
lyrics with 20 % word errors. Baseline in the same run: the exhaustive scan, MinHash estimates
against every signature (vectorised numpy), which is what the LSH saves.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from songmill.annotate.lyrics import LyricsConfig, LyricsStage  # noqa: E402
from songmill.annotate.lyrics_db import PHONEMES_VERSION, LyricsDB, LyricsIndexParams  # noqa: E402
from songmill.annotate.phonemes import phoneme_key, to_ipa_batch  # noqa: E402
from songmill.data_schema.store import Corpus, utcnow  # noqa: E402
from songmill.testaudio.sung import WORDS, generate_lyrics  # noqa: E402


def garble(text: str, rng: np.random.Generator, error_rate: float = 0.2) -> str:
    out = []
    for w in text.split():
        r = rng.random()
        if r < error_rate / 2:
            out.append(WORDS[int(rng.integers(len(WORDS)))])
        elif r >= error_rate:
            out.append(w)
    return " ".join(out)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lyrics", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--threshold", type=float, default=LyricsIndexParams().lsh_threshold)
    args = parser.parse_args()
    params = LyricsIndexParams(lsh_threshold=args.threshold)
    rng = np.random.default_rng(0)

    start = time.perf_counter()
    texts = generate_lyrics(args.lyrics, seed=1, lines=(8, 16))
    vocabulary = sorted({w for t in texts for w in t.split()})
    word_ipa = dict(zip(vocabulary, to_ipa_batch(vocabulary, "en"), strict=True))
    ipa = [" ".join(word_ipa[w] for w in t.split()) for t in texts]
    print(f"{len(texts)} lyrics generated and phonemized in {time.perf_counter() - start:.1f} s "
          f"(median {int(np.median([len(phoneme_key(s)) for s in ipa]))} IPA chars)")  # fmt: skip

    hasher = params.hasher()
    start = time.perf_counter()
    signatures = hasher.signatures([phoneme_key(s) for s in ipa], params.shingle_size)
    print(
        f"signatures: {time.perf_counter() - start:.2f} s ({len(ipa) / (time.perf_counter() - start):.0f} lyrics/s)"
    )

    corpus = Corpus(tempfile.mkdtemp(prefix="bench-lyrics-") + "/corpus")
    now = utcnow()
    rows = [
        {
            "lyric_id": f"L{i:06d}",
            "title": None,
            "artist": None,
            "language": "en",
            "lyrics": t,
            "ipa": s,
            "phonemes_version": PHONEMES_VERSION,
            "signature": sig.astype("<u4").tobytes(),
            "num_perm": params.num_perm,
            "seed": params.seed,
            "scheme": params.scheme,
            "shingle_size": params.shingle_size,
            "content_sha256": None,
            "source": "bench",
            "run_id": "bench",
            "created_at": now,
        }  # fmt: skip
        for i, (t, s, sig) in enumerate(zip(texts, ipa, signatures, strict=True))
    ]
    start = time.perf_counter()
    for i in range(0, len(rows), 50_000):
        corpus.write("lyrics", rows[i : i + 50_000])
    print(f"lyrics table written: {time.perf_counter() - start:.1f} s")
    db = LyricsDB(corpus, params)
    start = time.perf_counter()
    index = db.index()
    build_s = time.perf_counter() - start
    snapshot = os.path.join(corpus.table_dir("indexes"), db.index_relpath.split("/")[1])
    start = time.perf_counter()
    index = LyricsDB(corpus, params).index()
    reopen_s = time.perf_counter() - start
    print(f"LSH index (threshold {params.lsh_threshold}: {index.lsh.b} bands x {index.lsh.r} rows): built and saved in {build_s:.1f} s, "
          f"{os.path.getsize(snapshot) / 2**20:.0f} MiB pickled, reopened in {reopen_s:.1f} s")  # fmt: skip

    picks = rng.choice(len(texts), size=args.queries, replace=False)
    queries = [" ".join(word_ipa.get(w, "") for w in garble(texts[i], rng).split()) for i in picks]
    query_sigs = hasher.signatures([phoneme_key(q) for q in queries], params.shingle_size)
    lsh_ms, scan_ms, n_candidates, recall, lsh_top1, scan_top1 = [], [], [], 0, 0, 0
    for truth, sig in zip(picks, query_sigs, strict=True):
        start = time.perf_counter()
        ids = sorted(index.query(sig))
        estimates = hasher.jaccard_estimates(sig, index.signatures_of(ids)) if ids else np.zeros(0)
        best = ids[int(np.argmax(estimates))] if ids else None
        lsh_ms.append(1000 * (time.perf_counter() - start))
        start = time.perf_counter()
        all_estimates = hasher.jaccard_estimates(sig, signatures)
        scan_best = int(np.argmax(all_estimates))
        scan_ms.append(1000 * (time.perf_counter() - start))
        n_candidates.append(len(ids))
        recall += f"L{truth:06d}" in ids
        lsh_top1 += best == f"L{truth:06d}"
        scan_top1 += scan_best == truth
    n = len(picks)
    p50, p95 = np.percentile(lsh_ms, [50, 95])
    s50, s95 = np.percentile(scan_ms, [50, 95])
    print(f"\n{n} queries (20 % word errors) against {len(texts)} lyrics:")
    print(
        f"  LSH query + rank candidates: p50 {p50:.2f} ms, p95 {p95:.2f} ms; candidates median {int(np.median(n_candidates))}"
    )
    print(
        f"  exhaustive estimate scan (baseline): p50 {s50:.2f} ms, p95 {s95:.2f} ms -> LSH {s50 / p50:.1f}x faster at p50"
    )
    print(
        f"  true lyric among LSH candidates {recall / n:.3f}; top-1 by estimate: LSH {lsh_top1 / n:.3f}, scan {scan_top1 / n:.3f}"
    )

    # The whole stage per batch of 16 tracks: espeak-ng on the transcripts, signatures, LSH,
    # one DuckDB read of the shortlisted lyrics, exact re-score.
    from songmill.annotate.base import Track

    stage = LyricsStage(LyricsConfig(lsh_threshold=params.lsh_threshold), corpus=corpus)
    stage.setup()
    batch = [
        Track(
            {"track_id": str(i), "uri": ""},
            {"transcripts": {"text": garble(texts[i], rng), "language": "en"}},
        )
        for i in picks[:64]
    ]
    start = time.perf_counter()
    results = [r for b in range(0, len(batch), 16) for r in stage.process(batch[b : b + 16])]
    per_track = 1000 * (time.perf_counter() - start) / len(batch)
    top1 = np.mean(
        [r["lyric_id"] == f"L{int(t.track_id):06d}" for r, t in zip(results, batch, strict=True)]
    )
    scans = sum(r["method"] == "scan+rescore" for r in results)
    print(f"  lyrics stage end to end: {per_track:.0f} ms per track (batches of 16); top-1 {top1:.3f} on {len(batch)} tracks "
          f"({scans} found by the exhaustive fallback scan)")  # fmt: skip


if __name__ == "__main__":
    main()
