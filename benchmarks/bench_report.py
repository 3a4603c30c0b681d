"""`songmill report` on a large synthetic corpus: wall time of the report (summary header, every
panel) against the report before issue 23 (loaded from git, `--baseline-rev`) and a plain
`count(*)` over the manifest, all in the same run on the same corpus.

    .venv/bin/python benchmarks/bench_report.py --tracks 100000 [--keep DIR]

The corpus holds tracks, sources, qc, music (beats included), aesthetics, structure, captions,
near-duplicate clusters and errors for every track, written in runs of 10 000 rows.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import timedelta

import numpy as np


def build(root: str, n: int, run: int = 10_000) -> None:
    from songmill.data_schema.store import Corpus, utcnow

    corpus = Corpus(root)
    rng = np.random.default_rng(0)
    keys = [
        f"{t} {m}"
        for t in ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
        for m in ("major", "minor")
    ]
    labels = ["intro", "verse", "chorus", "bridge", "outro"]
    genres = ["rock", "pop", "jazz", "hip hop", "electronic", "folk", "classical", "metal"]
    start = utcnow() - timedelta(days=30)
    for lo in range(0, n, run):
        ids = [f"{i:064x}" for i in range(lo, min(n, lo + run))]
        now = start + timedelta(days=30 * lo / n)
        meta = {"stage_version": 1, "config_hash": "c", "run_id": f"r{lo}", "created_at": now}
        corpus.write(
            "tracks",
            [
                {
                    "track_id": t,
                    "uri": f"/m/{t[-8:]}.flac",
                    "duration_s": float(rng.uniform(30, 400)),
                    "sample_rate": 44100,
                    "channels": 2,
                    "created_at": now,
                }
                for t in ids
            ],
        )
        corpus.write(
            "sources",
            [
                {"uri": f"/m/{t[-8:]}.flac", "track_id": t, "status": "ok", "created_at": now}
                for t in ids
            ],
        )
        corpus.write(
            "qc",
            [
                {
                    "track_id": t,
                    **meta,
                    "loudness_lufs": float(rng.normal(-14, 3)),
                    "qc_pass": bool(rng.random() > 0.1),
                    "qc_reasons": [] if rng.random() > 0.1 else ["too_quiet"],
                }
                for t in ids
            ],
        )
        corpus.write(
            "music",
            [
                {
                    "track_id": t,
                    **meta,
                    "bpm": float(rng.uniform(60, 180)),
                    "bpm_confidence": float(rng.random()),
                    "keyscale": keys[int(rng.integers(24))],
                    "beats": [0.5 * k for k in range(40)],
                }
                for t in ids
            ],
        )
        corpus.write(
            "aesthetics",
            [
                {
                    "track_id": t,
                    **meta,
                    "aes_ce": float(rng.uniform(1, 10)),
                    "aes_cu": float(rng.uniform(1, 10)),
                    "aes_pc": float(rng.uniform(1, 10)),
                    "aes_pq": float(rng.uniform(1, 10)),
                    "aesthetics_pass": bool(rng.random() > 0.2),
                }
                for t in ids
            ],
        )
        corpus.write(
            "structure",
            [
                {
                    "track_id": t,
                    **meta,
                    "n_sections": 5,
                    "sections": [
                        {
                            "start": 10.0 * k,
                            "end": 10.0 * k + 10,
                            "label": labels[k],
                            "confidence": 0.5,
                        }
                        for k in range(5)
                    ],
                }
                for t in ids
            ],
        )
        corpus.write(
            "captions",
            [
                {
                    "track_id": t,
                    **meta,
                    "genres": [genres[int(rng.integers(8))]],
                    "moods": ["calm"],
                    "instruments": ["guitar", "drums"],
                }
                for t in ids
            ],
        )
        corpus.write(
            "errors",
            [
                {
                    "track_id": t,
                    "uri": f"/m/{t[-8:]}.flac",
                    "stage": "music",
                    "error_type": "DecodeError",
                    "message": "x",
                    "created_at": now,
                }
                for t in ids[:50]
            ],
        )
        corpus.write(
            "dup_clusters",
            [
                {
                    "track_id": t,
                    "cluster_id": ids[i - i % 3],
                    "canonical_track_id": ids[i - i % 3],
                    "similarity": 0.9,
                    "index_id": "i",
                    "created_at": now,
                }
                for i, t in enumerate(ids[:300])
            ],
        )
    corpus.compact("tracks")


def old_report_module(rev: str):
    text = subprocess.run(
        ["git", "show", f"{rev}:flows/report.py"],
        capture_output=True,
        text=True,
        check=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    ).stdout
    path = os.path.join(tempfile.mkdtemp(), "old_report.py")
    with open(path, "w") as f:
        f.write(text)
    spec = importlib.util.spec_from_file_location("old_report", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tracks", type=int, default=100_000)
    parser.add_argument("--keep", default=None, help="corpus folder to build once and reuse")
    parser.add_argument(
        "--baseline-rev", default="f56a96d", help="git revision of the report before issue 23"
    )
    args = parser.parse_args()
    from songmill.data_schema.store import Corpus
    from songmill.flows import report

    root = args.keep or tempfile.mkdtemp(prefix="bench-report-")
    if not os.path.exists(os.path.join(root, "songmill.json")):
        t = time.perf_counter()
        build(root, args.tracks)
        print(f"built {args.tracks} tracks in {time.perf_counter() - t:.0f} s -> {root}")
    corpus = Corpus(root, create=False)
    con = corpus.connect()
    t = time.perf_counter()
    con.execute("SELECT count(*) FROM manifest").fetchall()
    count_s = time.perf_counter() - t
    con.close()
    out = os.path.join(root, "..", "bench-report.html")
    t = time.perf_counter()
    report.write_report(corpus, out)
    new_s = time.perf_counter() - t
    t = time.perf_counter()
    old_report_module(args.baseline_rev).write_report(corpus, out + ".old.html")
    old_s = time.perf_counter() - t
    print(f"{'what':<38} {'wall s':>7} {'x count(*)':>11}")
    for label, s in (
        ("count(*) FROM manifest (baseline)", count_s),
        (f"report before issue 23 ({args.baseline_rev})", old_s),
        ("report now", new_s),
    ):
        print(f"{label:<38} {s:7.2f} {s / count_s:11.1f}")
    print(f"report: {os.path.abspath(out)}")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
