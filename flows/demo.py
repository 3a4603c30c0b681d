"""`songmill demo`: the main job end to end on a generated corpus, offline, in a few minutes.

Generates about a dozen tracks with known tempo and key in wav / flac / mp3 / ogg plus two broken
files, ingests and annotates them (as Prefect flows), prints a DuckDB summary against the truth,
exports the training manifest, trains the tiny DCAE and DiT on it and writes a generated sample.
"""

from __future__ import annotations

import json
import os
import shutil
import time

import pyarrow as pa
from songmill.data_schema.store import Corpus
from songmill.flows import app
from songmill.flows.display import print_table


def make_demo_audio(folder: str, n_tracks: int, seed: int = 0) -> list[dict]:
    """Write the demo tracks and two broken files; returns the truth of the good tracks."""
    from songmill.testaudio.synth import demo_track_specs, render_track, write_track

    os.makedirs(folder, exist_ok=True)
    specs = demo_track_specs(n_tracks, seed)
    for spec in specs:
        audio = render_track(spec["bpm"], spec["key_tonic"], spec["key_mode"], spec["duration_s"], seed=spec["seed"], style=spec["style"])
        write_track(os.path.join(folder, spec["name"]), audio)
    # Two broken files: a truncated mp3 header and text pretending to be a wav.
    with open(os.path.join(folder, "broken_truncated.mp3"), "wb") as f:
        f.write(b"ID3\x04\x00\x00\x00\x00\x00\x00\xff\xfb\x90")
    with open(os.path.join(folder, "broken_not_audio.wav"), "w") as f:
        f.write("these are liner notes, not audio\n")
    with open(os.path.join(folder, "truth.json"), "w") as f:
        json.dump(specs, f, indent=1)
    return specs


SUMMARY_SQL = """
SELECT regexp_extract(t.uri, '[^/]+$') AS file,
       round(m.bpm, 1) AS bpm, truth.bpm AS true_bpm,
       m.keyscale AS key, truth.key_tonic || ' ' || truth.key_mode AS true_key,
       q.qc_pass, array_to_string(q.qc_reasons, ',') AS qc_flags, round(q.loudness_lufs, 1) AS lufs
FROM tracks t
JOIN truth ON truth.name = regexp_extract(t.uri, '[^/]+$')
LEFT JOIN music m USING (track_id)
LEFT JOIN qc q USING (track_id)
ORDER BY file
"""


def _summary(corpus: Corpus, truth: list[dict]) -> tuple[pa.Table, dict]:
    con = corpus.connect()
    try:
        con.register("truth", pa.Table.from_pylist(truth))
        table = con.sql(SUMMARY_SQL).to_arrow_table()
        errors = con.sql("SELECT regexp_extract(uri, '[^/]+$') AS file, stage, error_type, message FROM errors ORDER BY file").to_arrow_table()
    finally:
        con.close()
    rows = table.to_pylist()
    bpm_ok = sum(1 for r in rows if r["bpm"] is not None and abs(r["bpm"] - r["true_bpm"]) <= 0.02 * r["true_bpm"])
    key_ok = sum(1 for r in rows if r["key"] == r["true_key"])
    return table, {"tracks": len(rows), "bpm_correct": bpm_ok, "key_correct": key_ok, "errors": errors}


def run_demo(
    out: str = "./songmill-demo",
    corpus_root: str | None = None,
    n_tracks: int = 12,
    train: bool = True,
    train_steps: int = 200,
    engine: str = "prefect",
    settings: dict | None = None,
) -> int:
    """Generate, ingest, annotate, summarise, export and (optionally) train; returns an exit code.
    `settings`: stage settings (the demo's corpus is new, so it holds no songmill.toml)."""
    started = time.perf_counter()
    out = os.path.abspath(out)
    audio_dir = os.path.join(out, "audio")
    root = corpus_root or os.path.join(out, "corpus")
    if os.path.exists(root):  # the demo starts from scratch each time
        shutil.rmtree(root)
    shutil.rmtree(audio_dir, ignore_errors=True)

    print(f"1/5 generating {n_tracks} tracks with known tempo and key -> {audio_dir}")
    truth = make_demo_audio(audio_dir, n_tracks)
    from songmill.flows import demo_text

    sung = demo_text.add_sung_vocals(audio_dir, truth)

    print("2/5 ingest")
    settings = settings or {}
    summary = app.ingest(root, [audio_dir], settings, engine=engine)
    print(f"  {summary.new_tracks} new tracks, {summary.errors} errors")

    print("3/5 annotate: qc, music")
    for s in app.annotate(root, ["qc", "music"], settings, engine=engine):
        print(f"  {s.stage}: {s.n_ok} ok, {s.n_error} errors")

    corpus = Corpus(root, create=False)
    table, score = _summary(corpus, truth)
    print_table(table)
    print(f"tempo within 2 % of the truth: {score['bpm_correct']}/{score['tracks']};  key and mode exact: {score['key_correct']}/{score['tracks']}")
    print("error rows (the broken files):")
    print_table(score["errors"])

    print("   the text side, offline")
    demo_text.annotate_text_side(root, sung, settings, engine)

    print("4/5 manifest")
    manifest = os.path.join(out, "manifest.parquet")
    n = app.manifest(root, manifest, where="qc_pass")
    print(f"manifest: {n} tracks that pass QC -> {manifest}")

    if train:
        print(f"5/5 training the tiny DCAE and DiT for {train_steps} steps on CPU")
        try:
            from songmill.train.demo import train_demo
        except ImportError as exc:
            print(f"  training skipped: {exc}")
        else:
            result = train_demo(manifest, os.path.join(out, "train"), train_steps)
            for key, value in result.items():
                print(f"  {key}: {value}")

    demo_text.print_missing_weights(settings)
    print(f"\ndone in {time.perf_counter() - started:.0f} s. The corpus is {root}")
    print(f"  DuckDB:     songmill query \"SELECT * FROM manifest LIMIT 5\" --corpus {root}")
    print(f"              or plain DuckDB, every view: duckdb {os.path.join(root, 'songmill.duckdb')} -c \"FROM manifest LIMIT 5\"")
    print(f"  Status:     songmill status --corpus {root};  plots: songmill report --out report.html --corpus {root}")
    print(f"  Prefect UI: PREFECT_HOME={os.environ.get('PREFECT_HOME', os.path.join(root, '_prefect'))} prefect server start")
    print("              then open http://127.0.0.1:4200 to see the ingest and annotate flow runs")
    return 0
