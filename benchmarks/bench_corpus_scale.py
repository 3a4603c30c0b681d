"""Corpus views at scale: whole CLI calls over a synthetic corpus of N tracks, against the targets.

Writes `tracks`, `sources`, `qc` and `music` (real-length beat lists) through the `Corpus` API in
parts of 50 k rows; after each chunk, the automatic compaction every ingest / annotate run does at
its end (one `compact_if_needed` over the tables: a new manifest snapshot after a compaction, else
a manifest delta when the parts since pass 2 %). So the queries run in the state a build leaves:
between compactions (at 2 M, 400 k tracks in parts); after the memory probes (which compact every
table), a second run with the same `--keep` measures the compacted state.
Then times, as whole `songmill` CLI calls (best of 3; export once), against issue 9's targets:
  - filter + group over `manifest` (<= 1.0 s);   - `SELECT count(*) FROM manifest` (<= 1.0 s);
  - `songmill manifest --where "qc_pass AND bpm < 100"` (30 % of the tracks; <= 5 s), and the same
    with `--columns all` (the beat lists too: most of the bytes);
  - `songmill annotate --stages qc,music --engine local` with nothing pending (planning; <= 2 s);
the same group / count with a small delta (1 000 new qc rows in one part, not compacted), and the
peak memory of compacting each table (a subprocess each, DuckDB under its memory limit).

Same-run baselines, in-process on the same files: the previous design (views built in memory on
every connection, the manifest joined from every table's snapshot on every query), raw DuckDB
joining the table snapshots for the filter + group, and the CLI's start-up (`query "SELECT 1"`).

    .venv/bin/python benchmarks/bench_corpus_scale.py --tracks 200000
    .venv/bin/python benchmarks/bench_corpus_scale.py --tracks 2000000 --keep /tmp/corpus-2m
    .venv/bin/python benchmarks/bench_corpus_scale.py --tracks 2000000 --keep /tmp/corpus-2m --grow 400000  # + 400 k in parts
    .venv/bin/python benchmarks/bench_corpus_scale.py --tracks 20000000 --tables qc --no-queries  # build + memory only
    # linear growth, 200 k -> 2 M -> 20 M: 20 runs each, no beat lists (20 M with them is ~80 GB)
    .venv/bin/python benchmarks/bench_corpus_scale.py --tracks 20000000 --run-tracks 1000000 --no-beats --keep /tmp/c20m
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa

PART_ROWS = 50_000
CLI_TIMEOUT_S = 120
BIN = os.path.join(os.path.dirname(sys.executable), "songmill")
GROUP_SQL = "SELECT keyscale, count(*) AS n, avg(bpm) AS bpm, avg(loudness_lufs) AS lufs FROM manifest WHERE qc_pass AND duration_s > 60 GROUP BY keyscale ORDER BY n DESC"
COUNT_SQL = "SELECT count(*) AS n FROM manifest"
EXPORT_WHERE = "qc_pass AND bpm < 100"
TONICS = np.array(["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"])
MODES = np.array(["major", "minor"])


def track_ids(start: int, n: int) -> list[str]:
    return [hashlib.sha256(f"track-{i}".encode()).hexdigest() for i in range(start, start + n)]


def chunk_tables(
    start: int,
    n: int,
    qc_key: tuple[int, str],
    music_key: tuple[int, str],
    run_id: str,
    beats: bool = True,
) -> dict[str, pa.Table]:
    rng = np.random.default_rng(start)
    ids = pa.array(track_ids(start, n))
    now = pa.array([datetime.now(UTC)] * n, pa.timestamp("us", tz="UTC"))
    duration = rng.uniform(20, 320, n)
    uris = pa.array(
        [f"/music/library/{i // 1000:05d}/{i:08d}.flac" for i in range(start, start + n)]
    )
    tracks = pa.table(
        {
            "track_id": ids,
            "uri": uris,
            "size_bytes": pa.array(rng.integers(2e6, 6e7, n)),
            "duration_s": duration,
            "frames": pa.array((duration * 44100).astype(np.int64)),
            "sample_rate": pa.array(np.full(n, 44100, np.int32)),
            "channels": pa.array(np.full(n, 2, np.int32)),
            "codec": pa.array(["flac"] * n),
            "container": pa.array(["flac"] * n),
            "bit_depth": pa.array(np.full(n, 16, np.int32)),
            "run_id": pa.array([run_id] * n),
            "created_at": now,
        }
    )
    sources = pa.table(
        {
            "uri": uris,
            "size_bytes": tracks["size_bytes"],
            "mtime": rng.uniform(1.6e9, 1.7e9, n),
            "track_id": ids,
            "status": pa.array(["ok"] * n),
            "run_id": pa.array([run_id] * n),
            "created_at": now,
        }
    )
    stage_cols = lambda key: {  # noqa: E731
        "track_id": ids,
        "stage_version": pa.array(np.full(n, key[0], np.int32)),
        "config_hash": pa.array([key[1]] * n),
        "run_id": pa.array([run_id] * n),
        "created_at": now,
    }
    passed = rng.random(n) < 0.9
    qc = pa.table(
        stage_cols(qc_key)
        | {
            "duration_s": duration,
            "peak_dbfs": rng.uniform(-6, 0, n),
            "rms_dbfs": rng.uniform(-30, -8, n),
            "silence_ratio": rng.uniform(0, 0.2, n),
            "clipping_ratio": rng.uniform(0, 0.01, n),
            "loudness_lufs": rng.uniform(-30, -6, n),
            "bandwidth_hz": rng.uniform(8e3, 2.2e4, n),
            "dc_offset": rng.normal(0, 1e-3, n),
            "qc_pass": pa.array(passed),
            "qc_reasons": pa.array(
                [[] if p else ["silence"] for p in passed], pa.list_(pa.string())
            ),
        }
    )
    bpm = rng.uniform(60, 180, n)
    n_beats = (duration * bpm / 60).astype(np.int64) if beats else np.zeros(n, np.int64)
    offsets = np.concatenate([[0], np.cumsum(n_beats)])
    beat_values = (np.arange(offsets[-1]) - np.repeat(offsets[:-1], n_beats)) * np.repeat(
        60 / bpm, n_beats
    )
    beats = pa.ListArray.from_arrays(
        pa.array(offsets.astype(np.int32)), pa.array(beat_values.astype(np.float32))
    )
    tonic, mode = TONICS[rng.integers(0, 12, n)], MODES[rng.integers(0, 2, n)]
    music = pa.table(
        stage_cols(music_key)
        | {
            "bpm": bpm,
            "bpm_confidence": rng.uniform(0, 1, n),
            "beats": beats,
            "key_tonic": pa.array(tonic),
            "key_mode": pa.array(mode),
            "keyscale": pa.array(np.char.add(np.char.add(tonic, " "), mode)),
            "key_strength": rng.uniform(0, 1, n),
            "tuning_hz": rng.normal(440, 1, n),
            "time_signature": pa.array(["4/4"] * n),
        }
    )
    return {"tracks": tracks, "sources": sources, "qc": qc, "music": music}


def build(
    root: str,
    n_tracks: int,
    tables: list[str],
    first: int = 0,
    run_tracks: int = PART_ROWS,
    beats: bool = True,
    end_of_run_check: bool = True,
) -> dict:
    """Write `n_tracks` in runs of `run_tracks` (parts of at most 50 k rows), each run ended by
    the compaction check an ingest / annotate run ends with (unless `end_of_run_check` is false:
    the bulk state, every part left as written)."""
    from songmill.annotate import stage_class
    from songmill.data_schema.store import Corpus

    keys = {}
    for name in ("qc", "music"):
        stage = stage_class(name)()
        keys[name] = (stage.version, stage.config_hash)
    corpus = Corpus(root)
    compactions, compact_s, check_s, rows_written = 0, 0.0, 0.0, 0
    started = time.perf_counter()
    for run in range(first, first + n_tracks, run_tracks):
        for start in range(run, min(run + run_tracks, first + n_tracks), PART_ROWS):
            n = min(PART_ROWS, run + run_tracks - start, first + n_tracks - start)
            for table, data in chunk_tables(
                start, n, keys["qc"], keys["music"], f"bench-{run}", beats
            ).items():
                if table in tables:
                    corpus.write(table, data)
                    rows_written += n
        if not end_of_run_check:
            continue
        before = {t: len(corpus.table_files(t).parts) for t in tables}
        t0 = time.perf_counter()
        corpus.compact_if_needed(tables)  # what every ingest / annotate run does at its end
        check_s += time.perf_counter() - t0
        done = sum(len(corpus.table_files(t).parts) < before[t] for t in tables)
        if done:
            compactions += done
            compact_s += time.perf_counter() - t0
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs)
    return {
        "write_s": time.perf_counter() - started,
        "compactions": compactions,
        "compact_s": compact_s,
        "end_of_run_checks_s": check_s,
        "rows_written": rows_written,
        "bytes": size,
    }


def cli(args: list[str], root: str, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        # bounded: a call that does more than it should (work pending after all) must not hold
        # the machine, or the timing lock, for long
        subprocess.run(
            [BIN, *args, "--corpus", root],
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=CLI_TIMEOUT_S,
        )
        best = min(best, time.perf_counter() - t0)
    return best


def pinned_stages(root: str) -> tuple[list, bool]:
    """The qc and music stages, pinned to the version and config the corpus was written with
    (a stage that moved on since would owe every track), and whether they were pinned."""
    from songmill.annotate import stage_class
    from songmill.data_schema.store import Corpus

    corpus = Corpus(root, create=False)
    stages, pinned = [], False
    for name in ("qc", "music"):
        cls = stage_class(name)
        have = corpus.sql(
            f"SELECT stage_version, config_hash FROM {cls.table} LIMIT 1"
        ).to_pylist()[0]
        stage = cls()
        if (have["stage_version"], have["config_hash"]) != (stage.version, stage.config_hash):
            attrs = {"version": have["stage_version"], "config_hash": have["config_hash"]}
            stage, pinned = type(f"Pinned{cls.__name__}", (cls,), attrs)(), True
        stages.append(stage)
    return stages, pinned


def plan_in_process(root: str, stages: list) -> float:
    from songmill.annotate import runner
    from songmill.data_schema.store import Corpus

    corpus = Corpus(root, create=False)
    t0 = time.perf_counter()
    pending = runner.plan(corpus, stages).n_tracks
    elapsed = time.perf_counter() - t0
    if pending:  # the CLI call must find nothing to run
        raise SystemExit(f"{pending} tracks pending: not the nothing-pending case")
    return elapsed


def previous_design_connection(root: str):
    """The views as they were before this design: built in memory on every connection, the
    manifest joined from every table's snapshot (and parts) on every query."""
    import duckdb
    from songmill.data_schema.store import Corpus
    from songmill.data_schema.tables import TABLES
    from songmill.data_schema.views import create_views

    corpus = Corpus(root, create=False)
    con = duckdb.connect(":memory:")
    create_views(con, {t: corpus.table_files(t) for t in TABLES})
    return con, corpus


def timed(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def baselines(root: str, scratch: str) -> dict[str, float]:
    import duckdb

    out = os.path.join(scratch, "previous-manifest.parquet")
    t0 = time.perf_counter()
    con, corpus = previous_design_connection(root)
    connect_s = time.perf_counter() - t0
    snap = {
        t: corpus.table_files(t).snapshot or list(corpus.table_files(t).raw)
        for t in ("tracks", "qc", "music")
    }
    raw_group = f"""SELECT m.keyscale, count(*) AS n, avg(m.bpm), avg(q.loudness_lufs)
        FROM read_parquet({snap["music"]!r}) m JOIN read_parquet({snap["qc"]!r}) q USING (track_id)
        JOIN read_parquet({snap["tracks"]!r}) t USING (track_id)
        WHERE q.qc_pass AND t.duration_s > 60 GROUP BY 1 ORDER BY n DESC"""
    raw = duckdb.connect(":memory:")
    result = {
        "previous_connect": connect_s,
        "group_previous": timed(lambda: con.execute(GROUP_SQL).fetchall()),
        "count_previous": timed(lambda: con.execute(COUNT_SQL).fetchall()),
        "export_previous": timed(
            lambda: con.execute(
                f"COPY (SELECT * FROM manifest WHERE {EXPORT_WHERE} ORDER BY track_id) TO '{out}' (FORMAT parquet, COMPRESSION zstd)"
            ),
            repeat=1,
        ),
        "group_raw_duckdb": timed(lambda: raw.execute(raw_group).fetchall()),
    }
    con.close()
    return result


def with_small_delta(root: str, fn):
    """Run `fn` with 1 000 re-done qc rows in one uncompacted part (then take the part out again:
    the kept corpus stays as built)."""
    from songmill.data_schema.store import Corpus

    corpus = Corpus(root, create=False)
    rows = corpus.sql("SELECT * FROM qc ORDER BY track_id LIMIT 1000")
    rows = rows.set_column(
        rows.schema.get_field_index("run_id"), "run_id", pa.array(["bench-delta"] * rows.num_rows)
    )
    part = corpus.write("qc", rows)
    try:
        return fn()
    finally:
        os.remove(part)
        corpus.refresh_catalog()


TARGETS = {"group": 1.0, "count": 1.0, "export": 5.0, "plan": 2.0}
BULK_TIMEOUT_S = 3600


def cli_call(args: list[str], root: str, timeout: float = BULK_TIMEOUT_S) -> dict:
    """One whole CLI call: wall seconds and the peak RSS of its process (os.wait4's rusage is
    that child's own), or the last line it printed on failure (a failure is a result here)."""
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [BIN, *args, "--corpus", root], stdout=subprocess.DEVNULL, stderr=err
        )
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        lines = err.read().decode(errors="replace").strip().splitlines()
    out = {"s": round(seconds, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024)}
    if proc.returncode != 0:
        out["failed"] = (lines[-1] if lines else f"exit {proc.returncode}")[:300]
    return out


def best_of(args: list[str], root: str, repeat: int) -> dict:
    calls = [cli_call(args, root) for _ in range(repeat)]
    failed = [c for c in calls if "failed" in c]
    out = failed[0] if failed else min(calls, key=lambda c: c["s"])
    print(
        " ", args[0], json.dumps(out), flush=True
    )  # as it comes: a long run keeps what it measured
    return out


def bulk_round(root: str, scratch: str, repeat: int, plan: bool = True) -> dict:
    """group, count, export (and planning: an annotate call with nothing pending), CLI calls."""
    out = {
        "group": best_of(["query", GROUP_SQL], root, repeat),
        "count": best_of(["query", COUNT_SQL], root, repeat),
        "export": best_of(
            ["manifest", "--where", EXPORT_WHERE, "--out", os.path.join(scratch, "m.parquet")],
            root,
            1,
        ),
    }
    if plan:
        out["plan"] = best_of(
            ["annotate", "--stages", "qc,music", "--engine", "local", "--quiet"],
            root,
            1 if repeat == 1 else 2,
        )
    return out


def bulk(root: str, scratch: str, args: argparse.Namespace, tables: list[str]) -> dict:
    """The state a first annotate run over a whole library leaves: every table written in one
    run, `PART_ROWS`-row parts, no compaction. Then, as whole CLI calls: the queries before
    compaction (slow is allowed, failing is not), an annotate call with nothing pending (its
    planning, and the end-of-run compaction it does), `songmill compact` (peak RSS), the queries
    and the planning after."""
    report: dict = {"tracks": args.tracks, "mode": "bulk"}
    if not os.path.exists(os.path.join(root, "songmill.json")):
        report["build"] = build(
            root,
            args.tracks,
            tables,
            run_tracks=args.tracks,
            beats=not args.no_beats,
            end_of_run_check=False,
        )
        print("built", json.dumps(report["build"]), flush=True)
    if args.build_only:
        return report
    if args.no_queries:
        report["compact"] = cli_call(["compact"], root)
        print(json.dumps(report, indent=1), flush=True)
        return report
    report["startup"] = best_of(["query", "SELECT 1"], root, 3)
    report["before"] = bulk_round(root, scratch, repeat=1)
    print("before", json.dumps(report["before"]), flush=True)
    report["compact"] = best_of(["compact"], root, 1)
    report["after"] = bulk_round(root, scratch, repeat=3)
    print(json.dumps(report, indent=1), flush=True)
    print(
        f"\n{'bulk, whole CLI calls':34s} {'target':>7s} {'before s':>9s} {'after s':>8s} {'met':>4s}"
    )
    for key in ("group", "count", "export", "plan"):
        before, after = report["before"][key], report["after"][key]
        shown = lambda c: "FAILED" if "failed" in c else f"{c['s']:.2f}"  # noqa: E731
        met = "failed" not in after and after["s"] <= TARGETS[key]
        print(
            f"{key:34s} {TARGETS[key]:7.2f} {shown(before):>9s} {shown(after):>8s} {'yes' if met else 'NO':>4s}"
        )
    c = report["compact"]
    print(
        f"{'compact (peak RSS MB, target 2048)':34s} {'':7s} {'':9s} {'FAILED' if 'failed' in c else c['s']:>8} "
        f"{c['peak_rss_mb']} MB; annotate before compaction: {report['before']['plan']['peak_rss_mb']} MB"
    )
    print(f"CLI start-up (query 'SELECT 1'): {report['startup']['s']:.2f} s")
    return report


def print_table(report: dict) -> None:
    cli_s, base = report["cli_s"], report["baseline_s"]
    rows = [
        ("filter + group over manifest", "group", base["group_previous"], base["group_raw_duckdb"]),
        ("count(*) over manifest", "count", base["count_previous"], None),
        (
            f"export of {report['exported_rows']} manifest rows",
            "export",
            base["export_previous"],
            None,
        ),
        (
            "annotate qc,music, nothing pending"
            + (" (p)" if report.get("plan_pinned_in_process_plus_startup") else ""),
            "plan",
            None,
            None,
        ),
    ]
    print(
        f"\n{'operation':40s} {'target':>7s} {'CLI s':>7s} {'met':>4s} {'prev s*':>8s} {'raw s*':>7s}"
    )
    for label, key, prev, raw in rows:
        value = cli_s[key]
        print(
            f"{label:40s} {TARGETS[key]:7.2f} {value:7.2f} {'yes' if value <= TARGETS[key] else 'NO':>4s} "
            f"{'' if prev is None else f'{prev:8.2f}'} {'' if raw is None else f'{raw:7.2f}'}"
        )
    print(
        f"{'export with --columns all (beat lists)':40s} {'':7s} {cli_s['export_all_columns']:7.2f}"
    )
    print(
        f"{'group / count with a 1 000-row delta':40s} {'':7s} {cli_s['group_delta']:7.2f} / {cli_s['count_delta']:.2f}"
    )
    print(
        "(p): stages moved on since the corpus was built: planning in-process with them pinned, plus the start-up"
    )
    print(
        f"CLI start-up (query 'SELECT 1'): {report['cli_startup_s']:.2f} s; * = in-process, same run "
        f"(previous design: views built per connection, {base['previous_connect']:.2f} s, not counted)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tracks", type=int, default=200_000)
    parser.add_argument("--tables", default="tracks,sources,qc,music")
    parser.add_argument(
        "--keep", default=None, help="build the corpus here and keep it (reused if present)"
    )
    parser.add_argument(
        "--no-queries", action="store_true", help="build and compaction memory only"
    )
    parser.add_argument(
        "--no-memory", action="store_true", help="skip the compaction memory probes"
    )
    parser.add_argument(
        "--grow",
        type=int,
        default=0,
        help="then write this many more tracks in runs of 50 k, each "
        "followed by the end-of-run compaction check (a kept corpus grows each time it is given)",
    )
    parser.add_argument(
        "--run-tracks",
        type=int,
        default=PART_ROWS,
        help="tracks per run: the compaction check "
        "ends each run (default 50 k; a 20 M build in runs of 1 M is 20 ingest runs)",
    )
    parser.add_argument(
        "--no-beats",
        action="store_true",
        help="empty beat lists (a 20 M corpus with real-length "
        "beat lists needs ~80 GB; the views' queries prune the column)",
    )
    parser.add_argument(
        "--bulk",
        action="store_true",
        help="one run that writes everything (parts of 50 k rows, no "
        "end-of-run compaction: the state a first annotate run over a whole library leaves), then "
        "the CLI calls before and after `songmill compact`, with its peak RSS",
    )
    parser.add_argument(
        "--build-only",
        action="store_true",
        help="with --bulk and --keep: build the corpus, nothing else "
        "(copy it, then run --bulk on each copy: the calls change its state)",
    )
    parser.add_argument(
        "--head-compact",
        action="store_true",
        help="also measure a whole-table load into memory (needs RAM)",
    )
    args = parser.parse_args()
    tables = args.tables.split(",")
    scratch = tempfile.mkdtemp(prefix="bench-corpus-")
    root = args.keep or os.path.join(scratch, "corpus")
    if args.bulk:
        try:
            bulk(root, scratch, args, tables)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return
    report: dict = {"tracks": args.tracks}
    if not os.path.exists(os.path.join(root, "songmill.json")):
        report["build"] = build(
            root, args.tracks, tables, run_tracks=args.run_tracks, beats=not args.no_beats
        )
        print("built", json.dumps(report["build"]), flush=True)
    if args.grow:  # the state between compactions: new tracks in parts on top of the snapshots
        from songmill.data_schema.store import Corpus

        first = (
            Corpus(root, create=False)
            .sql("SELECT count(*) AS n FROM tracks")
            .column("n")[0]
            .as_py()
        )
        report["grow"] = build(root, args.grow, tables, first=first, beats=not args.no_beats)
        report["tracks"] = first + args.grow
        print("grew", json.dumps(report["grow"]), flush=True)
    try:
        if set(tables) >= {"tracks", "sources", "qc", "music"} and not args.no_queries:
            stages, pinned = pinned_stages(root)
            plan_s = plan_in_process(root, stages)
            now = {"startup": cli(["query", "SELECT 1"], root)}
            now["group"] = cli(["query", GROUP_SQL], root)
            now["count"] = cli(["query", COUNT_SQL], root)
            now["export"] = cli(
                ["manifest", "--where", EXPORT_WHERE, "--out", os.path.join(scratch, "m.parquet")],
                root,
                repeat=1,
            )
            now["export_all_columns"] = cli(
                [
                    "manifest",
                    "--where",
                    EXPORT_WHERE,
                    "--columns",
                    "all",
                    "--out",
                    os.path.join(scratch, "m-all.parquet"),
                ],
                root,
                repeat=1,
            )
            if pinned:  # the live stages would run: planning in-process (pinned) plus the start-up
                now["plan"] = plan_s + now["startup"]
                report["plan_pinned_in_process_plus_startup"] = True
            else:
                now["plan"] = cli(
                    ["annotate", "--stages", "qc,music", "--engine", "local", "--quiet"], root
                )
            report["plan_in_process_s"] = plan_s
            now["group_delta"], now["count_delta"] = with_small_delta(
                root, lambda: (cli(["query", GROUP_SQL], root), cli(["query", COUNT_SQL], root))
            )
            print("cli", json.dumps(now), flush=True)
            import pyarrow.parquet as pq

            report["exported_rows"] = pq.read_metadata(os.path.join(scratch, "m.parquet")).num_rows
            report["cli_startup_s"] = now.pop("startup")
            report["cli_s"] = now
            base = baselines(root, scratch)
            report["baseline_s"] = base
            report["ratios"] = {
                "group_cli_vs_previous_in_process": now["group"] / base["group_previous"],
                "group_cli_vs_raw_duckdb_in_process": now["group"] / base["group_raw_duckdb"],
                "count_cli_vs_previous_in_process": now["count"] / base["count_previous"],
                "export_cli_vs_previous_in_process": now["export"] / base["export_previous"],
            }
            print(json.dumps(report, indent=1), flush=True)
            print_table(report)
        if not args.no_memory:
            report["compaction"] = {
                t: compaction_memory(root, t, args.head_compact) for t in tables
            }
            out = subprocess.run(
                [sys.executable, "-c", MANIFEST_PROBE, root],
                check=True,
                capture_output=True,
                text=True,
            )
            _, seconds, rss = out.stdout.split()[
                -3:
            ]  # the tables were compacted: a new manifest snapshot
            report["compaction"]["manifest_snapshot"] = {
                "compact_s": float(seconds),
                "compact_peak_rss_mb": float(rss),
            }
            print(json.dumps(report["compaction"], indent=1))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


PEAK = """
def peak_mb():  # this process's own peak (ru_maxrss is inherited from the parent across exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
"""
COMPACT_PROBE = (
    PEAK
    + """
import sys, time
from songmill.data_schema.store import Corpus
corpus = Corpus(sys.argv[1], create=False)
t0 = time.perf_counter()
merged = corpus.compact(sys.argv[2], manifest=False)
print(merged, time.perf_counter() - t0, peak_mb())
"""
)
MANIFEST_PROBE = (
    PEAK
    + """
import sys, time
from songmill.data_schema.store import Corpus
corpus = Corpus(sys.argv[1], create=False)
t0 = time.perf_counter()
corpus.refresh_manifest_snapshot()
print(1, time.perf_counter() - t0, peak_mb())
"""
)
HEAD_COMPACT_PROBE = (
    PEAK
    + """
import sys, time
import duckdb
from songmill.data_schema.store import Corpus
corpus = Corpus(sys.argv[1], create=False)
t0 = time.perf_counter()
con = duckdb.connect()
table = con.execute("SELECT * FROM read_parquet(?, union_by_name = true)", [corpus.part_files(sys.argv[2])]).to_arrow_table()
print(table.num_rows, time.perf_counter() - t0, peak_mb())
"""
)


def compaction_memory(root: str, table: str, head: bool) -> dict[str, float]:
    """Peak RSS of a full compaction of `table` (forced: a fresh snapshot of every row)."""
    from songmill.data_schema.store import Corpus

    corpus = Corpus(root, create=False)
    corpus.write(table, corpus.sql(f"SELECT * FROM raw_{table} LIMIT 1"))  # one part to merge
    out = subprocess.run(
        [sys.executable, "-c", COMPACT_PROBE, root, table],
        check=True,
        capture_output=True,
        text=True,
    )
    _, seconds, rss = out.stdout.split()[-3:]
    result = {"compact_s": float(seconds), "compact_peak_rss_mb": float(rss)}
    if head:  # HEAD's compact loaded the whole table into memory first
        out = subprocess.run(
            [sys.executable, "-c", HEAD_COMPACT_PROBE, root, table],
            check=True,
            capture_output=True,
            text=True,
        )
        _, seconds, rss = out.stdout.split()[-3:]
        result |= {"head_load_s": float(seconds), "head_peak_rss_mb": float(rss)}
    return result


if __name__ == "__main__":
    main()
