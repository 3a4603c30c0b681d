"""Export speed: tracks/s of `songmill export acestep15|acestep-v1` at 10 k tracks, against a
same-run baseline that reads the same manifest with pyarrow and dumps its rows as one JSON file
(the least any export must do: read the rows, write them once), and the filesystem's part: the
same run's rate of creating 3 small files per track atomically (`files:3`; ACE-Step 1.5's export
writes 2-3 sidecars per sample, v1's 2, plus the audio link or copy).

The manifest is a real one: an annotated corpus of N synthetic tracks (every table the exports
read: music, separation, transcripts, lyric sections, captions; beat lists included) written
through the corpus store and exported with `songmill manifest`. The audio modes that write no
audio bytes (`none`, `link`) run at N; `copy` (bytes of real 5 s WAV / MP3 files) at --copy-tracks.
Each measurement runs in a fresh process, so its peak RSS is its own.

    .venv/bin/python benchmarks/bench_export.py [--tracks 10000] [--copy-tracks 300]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

KEY = dict(stage_version=1, config_hash="c", run_id="r")
LYRICS = "[verse]\nwalking down the empty street\necho in the night\n\n[chorus]\nwe are the stars tonight\nshining bright"


def build_manifest(work: Path, name: str, n: int, audio_files: list[str]) -> str:
    """A manifest of n tracks; with fewer files than tracks, track i names `<file stem>-i<ext>`."""
    import numpy as np
    from songmill.data_schema.manifest import write_manifest
    from songmill.data_schema.store import Corpus, utcnow

    corpus = Corpus(str(work / f"corpus-{name}"))
    now = utcnow()
    ids = [f"{i:064x}" for i in range(n)]
    beats = np.arange(0.25, 180, 0.5).round(3).tolist()
    rows = {
        "tracks": [
            dict(
                track_id=t,
                uri=_numbered(audio_files[i % len(audio_files)], i)
                if len(audio_files) < n
                else audio_files[i],
                duration_s=180.0,
                sample_rate=44100,
                channels=2,
                created_at=now,
            )
            for i, t in enumerate(ids)
        ],
        "qc": [dict(track_id=t, created_at=now, **KEY, qc_pass=True) for t in ids],
        "music": [
            dict(
                track_id=t,
                created_at=now,
                **KEY,
                bpm=120.0,
                bpm_confidence=0.9,
                keyscale="F# minor",
                key_tonic="F#",
                key_mode="minor",
                time_signature="4/4",
                beats=beats,
                downbeats=beats[::4],
            )
            for t in ids
        ],
        "separation": [
            dict(track_id=t, created_at=now, **KEY, is_instrumental=i % 5 == 0)
            for i, t in enumerate(ids)
        ],
        "transcripts": [
            dict(
                track_id=t,
                created_at=now,
                **KEY,
                text="walking down the empty street",
                language="en",
                hallucination=False,
                segments=[dict(start=1.0, end=3.0, text="walking down the empty street")],
            )
            for t in ids
        ],
        "lyric_sections": [
            dict(
                track_id=t,
                created_at=now,
                **KEY,
                lyrics_tagged="[instrumental]" if i % 5 == 0 else LYRICS,
                lyrics_source="instrumental" if i % 5 == 0 else "transcript",
            )
            for i, t in enumerate(ids)
        ],
        "captions": [
            dict(
                track_id=t,
                created_at=now,
                **KEY,
                caption_description=f"An energetic synth-pop song with a driving beat, number {i}.",
                caption_tags="synth-pop, energetic, female vocals",
                caption_recaption="A synth-pop song in F# minor at 120 BPM.",
                genres=["synth-pop"],
                moods=["energetic"],
                instruments=["synthesizer"],
                contradictions=["bpm: caption says 90, measured 120"] if i % 50 == 0 else [],
                caption_flagged=i % 50 == 0,
            )
            for i, t in enumerate(ids)
        ],
    }
    for table, table_rows in rows.items():
        corpus.write(table, table_rows)
    out = str(work / f"manifest-{name}.parquet")
    write_manifest(corpus, out)
    return out


def file_ceiling(manifest: str, out: str, per_track: int) -> int:
    """The filesystem's part: `per_track` small files per manifest row, each written under a
    temporary name and renamed (what the per-sample sidecars cost before any label work)."""
    import pyarrow.parquet as pq

    n = pq.read_metadata(manifest).num_rows
    for i in range(n):
        for k in range(per_track):
            tmp = os.path.join(out, f".tmp-{i}-{k}")
            with open(tmp, "w") as f:
                f.write("x" * 200)
            os.replace(tmp, os.path.join(out, f"{i}-{k}.txt"))
    return n


def _numbered(path: str, i: int) -> str:
    stem, ext = os.path.splitext(path)
    return f"{stem}-{i}{ext}"


def baseline(manifest: str, out: str) -> int:
    """pyarrow read of the manifest and one json.dump of its rows."""
    import pyarrow.parquet as pq

    rows = pq.read_table(manifest).to_pylist()
    with open(out, "w") as f:
        json.dump(rows, f, default=str)
    return len(rows)


def worker(mode: str, manifest: str, out: str) -> None:
    import pyarrow.parquet  # noqa: F401  (imports before the clock starts, for both)
    from songmill.train.export_datasets import ExportOptions, export_dataset

    if mode.endswith(":hf"):
        import datasets  # noqa: F401
    import datetime

    import pyarrow as pa

    # the first timezone-aware timestamp pyarrow converts loads its tz database (~1 s): not export work
    pa.array([datetime.datetime.now(datetime.UTC)], pa.timestamp("us", tz="UTC")).to_pylist()
    started = time.perf_counter()
    if mode == "baseline":
        written = baseline(manifest, out)
    elif mode.startswith("files:"):
        written = file_ceiling(manifest, out, int(mode.split(":")[1]))
    else:
        kind, audio, *extra = mode.split(":")
        options = ExportOptions(
            kind, audio=audio, conflicts="keep", hf_dataset="hf" if extra == ["hf"] else None
        )
        written = export_dataset(manifest, out, options).written
    wall = time.perf_counter() - started
    peak = _peak_rss_mib()
    print(json.dumps({"mode": mode, "written": written, "seconds": wall, "peak_mib": peak}))


def _peak_rss_mib() -> float:
    """This process's peak RSS (VmHWM: its own address space; ru_maxrss would carry the parent's
    high-water mark over fork + exec)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(mode: str, manifest: str, out: str) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, "--worker", mode, manifest, out],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracks", type=int, default=10_000)
    parser.add_argument("--copy-tracks", type=int, default=300)
    parser.add_argument(
        "--worker", nargs=3, metavar=("MODE", "MANIFEST", "OUT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker)
        return 0
    work = Path(tempfile.mkdtemp(prefix="bench-export-"))
    try:
        # sources: one real WAV and one real MP3 (5 s); the big manifest names N paths (link / none
        # never read them), the copy manifest names real files
        import numpy as np
        import soundfile as sf

        wav = work / "src" / "song.wav"
        wav.parent.mkdir(parents=True)
        t = np.arange(5 * 44100) / 44100
        sf.write(wav, np.stack([0.3 * np.sin(2 * np.pi * 220 * t)] * 2, axis=1), 44100)
        mp3 = work / "src" / "song.mp3"
        subprocess.run(
            ["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(wav), "-q:a", "4", str(mp3)],
            check=True,
        )
        copies = []
        for i in range(args.copy_tracks):
            for src in (wav, mp3):
                dst = work / "copy-src" / f"song{i}{src.suffix}"
                dst.parent.mkdir(exist_ok=True)
                os.link(src, dst)
                copies.append(str(dst))
        started = time.perf_counter()
        big = build_manifest(work, "wav", args.tracks, [str(wav)])
        big_mp3 = build_manifest(work, "mp3", args.tracks, [str(mp3)])
        small_wav = build_manifest(
            work, "copy-wav", args.copy_tracks, [c for c in copies if c.endswith(".wav")]
        )
        small_mp3 = build_manifest(
            work, "copy-mp3", args.copy_tracks, [c for c in copies if c.endswith(".mp3")]
        )
        print(
            f"manifests built in {time.perf_counter() - started:.1f} s ({args.tracks} and {args.copy_tracks} tracks, "
            f"{os.path.getsize(big) / 2**20:.1f} MiB); machine: {os.cpu_count()} cores"
        )
        runs = [
            ("baseline", big, args.tracks),
            ("files:3", big, args.tracks),
            ("acestep15:none", big, args.tracks),
            ("acestep15:link", big, args.tracks),
            ("acestep-v1:link", big_mp3, args.tracks),
            ("acestep-v1:link:hf", big_mp3, args.tracks),
            ("baseline", small_wav, args.copy_tracks),
            ("acestep15:copy", small_wav, args.copy_tracks),
            ("acestep-v1:copy", small_mp3, args.copy_tracks),
        ]
        results = []
        for i, (mode, manifest, n) in enumerate(runs):
            out = str(
                work / f"out-{i}" / ("rows.json" if mode == "baseline" else "")
            )  # a new directory per run
            os.makedirs(os.path.dirname(out) if mode == "baseline" else out, exist_ok=True)
            r = measure(mode, manifest, out)
            results.append((mode, n, r))
        base = {n: r["seconds"] for mode, n, r in results if mode == "baseline"}
        print(
            f"{'mode':<22}{'tracks':>8}{'written':>9}{'seconds':>9}{'tracks/s':>10}{'x baseline time':>17}{'peak RSS MiB':>14}"
        )
        for mode, n, r in results:
            print(
                f"{mode:<22}{n:>8}{r['written']:>9}{r['seconds']:>9.2f}{n / r['seconds']:>10.0f}{r['seconds'] / base[n]:>17.1f}{r['peak_mib']:>14.0f}"
            )
        print(
            "# tracks/s = manifest rows in / wall s; written < tracks: rows dropped (none here: --conflicts keep);"
            " baseline = pyarrow read + one json.dump of the same rows, same run;"
            " files:3 = 3 small files per track written atomically, same run"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
