"""What the trainer pays to read a manifest before step 0: the one-pass typed reader
(data_schema/manifest.py: the footer for the features count, then only the columns the trainer
reads, as ManifestRecords) against the earlier path, in the same run (two full reads for the
features check, then a full read turned into a list of dicts with every column).

    .venv/bin/python benchmarks/bench_manifest_reader.py --rows 200000

The manifest has the columns a default `songmill manifest` export has (tracks, qc, music,
captions, lyrics, features: ~45 columns, caption texts and tag lists included). Each reader runs in
a fresh process: wall seconds and the growth of peak RSS over the interpreter's own.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write_manifest(path: str, rows: int) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    ids = [f"{i:064x}" for i in range(rows)]
    words = np.array("pop rock jazz soul funk edm folk metal ambient house dnb trap".split())
    columns = {
        "track_id": ids,
        "uri": [f"/music/library/artist{i % 997}/album{i % 89}/track{i}.flac" for i in range(rows)],
        "duration_s": rng.uniform(60, 400, rows),
        "sample_rate": np.full(rows, 44100, np.int32),
        "channels": np.full(rows, 2, np.int32),
        "codec": ["flac"] * rows,
        "qc_pass": rng.uniform(size=rows) > 0.05,
        "features_url": [
            f"corpus/features/{i % 256:02x}/{ids[i]}.safetensors" for i in range(rows)
        ],
        "lyrics": [" ".join(rng.choice(words, 40)) if i % 3 else None for i in range(rows)],
    }
    for name in (
        "silence_ratio",
        "clipping_ratio",
        "lufs",
        "bandwidth_hz",
        "dc_offset",
        "bpm",
        "bpm_confidence",
        "key_confidence",
        "tuning_hz",
        "ce",
        "cu",
        "pc",
        "pq",
        "vocal_ratio",
        "lyric_score",
    ):
        columns[name] = rng.normal(size=rows)
    for name in (
        "key_tonic",
        "key_mode",
        "keyscale",
        "time_signature",
        "language",
        "lyric_id",
        "caption_model",
    ):
        columns[name] = [str(v) for v in rng.choice(words, rows)]
    for name in ("caption_tags", "caption_description", "caption_recaption"):
        columns[name] = [" ".join(rng.choice(words, 25)) for _ in range(rows)]
    for name in ("genres", "moods", "instruments", "caption_styles", "repa_targets"):
        columns[name] = [list(rng.choice(words, 4)) for _ in range(rows)]
    pq.write_table(pa.table(columns), path, compression="zstd", row_group_size=122_880)


def earlier_reader(path: str) -> int:
    """What train/prepare.py + train/data.py did before: features_status twice (each a full
    read), then read_manifest (a full read, every row a dict of every column)."""
    import pyarrow.parquet as pq

    for _ in range(2):
        table = pq.read_table(path)
        _ = table.num_rows - table.column("features_url").null_count
        del table
    table = pq.read_table(path)
    rows = [r for r in table.to_pylist() if r.get("qc_pass") is not False]
    rows = [
        r
        for r in rows
        if all(r.get(c) is not None for c in ("track_id", "uri", "duration_s", "features_url"))
    ]
    return len(rows)


def one_pass_reader(path: str) -> int:
    from songmill.data_schema.manifest import features_count, read_manifest

    for _ in range(2):
        features_count(path)
    return len(read_manifest(path, require=("features_url",)))


def _peak_rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def child(mode: str, path: str) -> None:
    import pyarrow  # noqa: F401 - imported before the baseline, as the trainer has it
    import songmill.data_schema.manifest  # noqa: F401

    base = _peak_rss_mib()
    started = time.perf_counter()
    n = {"earlier": earlier_reader, "one-pass": one_pass_reader}[mode](path)
    print(
        json.dumps(
            {
                "mode": mode,
                "rows": n,
                "wall_s": time.perf_counter() - started,
                "peak_rss_growth_mib": _peak_rss_mib() - base,
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=2, metavar=("MODE", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    with tempfile.TemporaryDirectory(prefix="bench-manifest-") as tmp:
        path = os.path.join(tmp, "manifest.parquet")
        write_manifest(path, args.rows)
        print(f"manifest: {args.rows} rows, {os.path.getsize(path) / 2**20:.1f} MiB on disk")
        results: dict[str, list[dict]] = {"earlier": [], "one-pass": []}
        for _ in range(args.repeats):  # interleaved, so that both see the same machine load
            for mode in results:
                out = subprocess.run(
                    [sys.executable, __file__, "--child", mode, path],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                results[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
        best = {m: min(r["wall_s"] for r in rs) for m, rs in results.items()}
        peak = {m: min(r["peak_rss_growth_mib"] for r in rs) for m, rs in results.items()}
        assert len({rs[0]["rows"] for rs in results.values()}) == 1, (
            "the readers disagree on the rows"
        )
        print(f"{'reader':<10} {'wall s (best)':>14} {'peak RSS growth MiB':>20}")
        for mode in results:
            print(f"{mode:<10} {best[mode]:>14.2f} {peak[mode]:>20.0f}")
        print(
            f"one-pass vs earlier: {best['earlier'] / best['one-pass']:.1f}x faster, "
            f"{peak['earlier'] / max(peak['one-pass'], 1):.1f}x less peak memory ({results['earlier'][0]['rows']} trainable rows)"
        )


if __name__ == "__main__":
    main()
