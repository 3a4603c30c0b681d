"""`songmill demo`: the main job end to end on a generated corpus, offline, in a few minutes.

Generates about a dozen tracks with known tempo and key in wav / flac / mp3 / ogg plus two broken
files, ingests and annotates them (as Prefect flows), prints a DuckDB summary against the truth,
exports the training manifest, trains the tiny DCAE and DiT on it and writes a generated sample.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shlex
import shutil
import time
from collections.abc import Callable, Iterable

import pyarrow as pa
from songmill.annotate.settings import CONFIG_FILE, write_settings
from songmill.data_schema.store import Corpus
from songmill.flows import app
from songmill.flows.display import print_table

# Written into every folder the demo makes; the demo re-uses (and clears) only folders holding it.
DEMO_MARKER = ".songmill-demo"
# What the demo (and songmill on its corpus) writes at the top of its folders; anything else
# there is the user's, and the demo refuses the folder rather than touch it.
OUT_ENTRIES = {
    DEMO_MARKER,
    "audio",
    "corpus",
    "manifest.parquet",
    "manifest.parquet.json",
    "train",
    "report.html",
}
AUDIO_FIXED_ENTRIES = {
    DEMO_MARKER,
    "broken_truncated.mp3",
    "broken_not_audio.wav",
    "truth.json",
    "lyrics.jsonl",
}


class DemoFolderError(ValueError):
    """A folder the demo would write into holds something the demo did not make."""


def _corpus_entries() -> set[str]:
    """Top-level names songmill writes in a corpus folder (tables, catalog, Prefect's state...)."""
    from songmill.data_schema.tables import TABLES

    return {
        DEMO_MARKER,
        *TABLES,
        "songmill.json",
        "songmill.toml",
        "songmill.duckdb",
        "songmill.duckdb.json",
        "songmill.duckdb.wal",
        "songmill.duckdb.tmp",
        "_prefect",
        "_manifest",
        ".catalog.lock",
        "indexes",
        "features",
        "stems",
    }


def _is_songmill_entry(name: str, allowed: set[str]) -> bool:
    return name in allowed or name.startswith(".tmp-")


# Files songmill writes inside a corpus's folders (data_schema/store.py, catalog.py, the stages'
# blobs), as paths relative to the top-level folder; the demo clears a corpus folder only when
# everything in it matches (Prefect's own home, `_prefect`, is Prefect's to fill).
_CORPUS_FILE_PATTERNS = (
    ".compact.lock",
    ".catalog.lock",
    ".tmp-*",
    "part-*.parquet",
    "current-*.parquet",
    "history-*.parquet",
)
_CORPUS_FOLDER_PATTERNS = {
    "_manifest": ("manifest-*.parquet", "delta-*.parquet"),
    "indexes": ("lyrics-lsh-*.pkl",),
    "features": ("[0-9a-f][0-9a-f]/*.safetensors",),
    "stems": ("*/*/*-vocals.flac", "*/*/*-accompaniment.flac"),
}


def _is_songmill_corpus_file(top: str, relpath: str) -> bool:
    """Whether `relpath` (posix, inside the corpus's top-level folder `top`) is a file songmill
    writes there."""
    if top == "_prefect":
        return True
    name = relpath.rsplit("/", 1)[-1]
    if name.startswith(".tmp-") or (
        "/" not in relpath and any(fnmatch.fnmatchcase(name, p) for p in _CORPUS_FILE_PATTERNS)
    ):
        return True
    return any(fnmatch.fnmatchcase(relpath, p) for p in _CORPUS_FOLDER_PATTERNS.get(top, ()))


def _foreign_files_inside(
    folder: str, allowed: set[str], is_own: Callable[[str, str], bool]
) -> list[str]:
    """Files below the allowed top-level folders of `folder` that `is_own` does not recognise."""
    foreign = []
    for top in sorted(allowed):
        base = os.path.join(folder, top)
        if not os.path.isdir(base) or os.path.islink(base):
            continue
        for dirpath, dirnames, filenames in os.walk(base):
            rel_dir = os.path.relpath(dirpath, base).replace(os.sep, "/")
            for name in filenames + [
                d for d in dirnames if os.path.islink(os.path.join(dirpath, d))
            ]:
                relpath = name if rel_dir == "." else f"{rel_dir}/{name}"
                if not is_own(top, relpath):
                    foreign.append(f"{top}/{relpath}")
    return foreign


def claim_demo_folder(
    folder: str,
    allowed: Iterable[str],
    what: str,
    is_own: Callable[[str, str], bool] | None = None,
) -> None:
    """Make sure the demo may write (and clear) `folder`: it is missing, empty, or made by an
    earlier demo (it holds DEMO_MARKER) and holds nothing but what the demo writes there.
    `is_own(top, relpath)`: whether a file inside the top-level folder `top` is songmill's (the
    demo clears those folders whole, so a user's file anywhere inside is refused); without it
    only the top level is checked. Raises DemoFolderError before anything is written; nothing is
    removed here."""
    allowed = set(allowed)
    if os.path.lexists(folder) and not os.path.isdir(folder):
        raise DemoFolderError(
            f"the demo's {what} {folder} exists and is not a folder; give another path"
        )
    entries = os.listdir(folder) if os.path.isdir(folder) else []
    if entries and DEMO_MARKER not in entries:
        raise DemoFolderError(
            f"the demo's {what} {folder} holds files the demo did not make ({_names(entries)}); "
            "the demo only writes into a new or empty folder: give another path"
        )
    foreign = sorted(e for e in entries if not _is_songmill_entry(e, allowed))
    if foreign:
        raise DemoFolderError(
            f"the demo's {what} {folder} holds files the demo did not make ({_names(foreign)}); "
            "move them away or give another path"
        )
    inside = (
        _foreign_files_inside(folder, allowed, is_own) if is_own is not None and entries else []
    )
    if inside:
        raise DemoFolderError(
            f"the demo's {what} {folder} holds files the demo did not make ({_names(inside)}); "
            "move them away or give another path"
        )


def _names(entries: list[str]) -> str:
    shown = sorted(entries)[:3]
    return ", ".join(shown) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")


def _reset_demo_folder(folder: str, allowed: Iterable[str]) -> None:
    """Remove what an earlier demo wrote in `folder` (checked by claim_demo_folder) and mark it."""
    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(folder):
        if name == DEMO_MARKER or not _is_songmill_entry(name, set(allowed)):
            continue
        path = os.path.join(folder, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
    with open(os.path.join(folder, DEMO_MARKER), "w") as f:
        f.write("made by `songmill demo`; a later demo clears what it wrote here\n")


def _audio_entries(folder: str) -> set[str]:
    """The demo's audio file names: the fixed ones and those of the generated tracks."""
    from songmill.flows.demo_text import INSTRUMENT_RENDER_NAMES
    from songmill.testaudio.synth import DEMO_FORMATS, STYLES

    names = set(AUDIO_FIXED_ENTRIES) | set(INSTRUMENT_RENDER_NAMES)
    for entry in os.listdir(folder) if os.path.isdir(folder) else []:
        stem, _, ext = entry.rpartition(".")
        if (
            stem.startswith("demo_")
            and ext in DEMO_FORMATS
            and any(f"_{s}_" in stem for s in STYLES)
        ):
            names.add(entry)
    return names


SETTINGS_HEADER = """Written by `songmill demo`: the settings its stages ran with (the offline ones).
`songmill status`, `annotate` and `reprocess` on this corpus read them."""


def demo_settings(settings: dict | None) -> dict[str, dict]:
    """The offline stage settings the demo runs with, the user's (--config, --set) on top."""
    from songmill.flows.demo_text import OFFLINE_SETTINGS

    user = settings or {}
    merged = {stage: dict(table) for stage, table in user.items()}
    for stage, values in OFFLINE_SETTINGS.items():
        merged[stage] = {**values, **user.get(stage, {})}
    return merged


def make_demo_audio(folder: str, n_tracks: int, seed: int = 0) -> list[dict]:
    """Write the demo tracks and two broken files; returns the truth of the good tracks."""
    from songmill.testaudio.synth import demo_track_specs, render_track, write_track

    os.makedirs(folder, exist_ok=True)
    specs = demo_track_specs(n_tracks, seed)
    for spec in specs:
        audio = render_track(
            spec["bpm"],
            spec["key_tonic"],
            spec["key_mode"],
            spec["duration_s"],
            seed=spec["seed"],
            style=spec["style"],
        )
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
        errors = con.sql(
            "SELECT regexp_extract(uri, '[^/]+$') AS file, stage, error_type, message FROM errors ORDER BY file"
        ).to_arrow_table()
    finally:
        con.close()
    rows = table.to_pylist()
    bpm_ok = sum(
        1
        for r in rows
        if r["bpm"] is not None and abs(r["bpm"] - r["true_bpm"]) <= 0.02 * r["true_bpm"]
    )
    key_ok = sum(1 for r in rows if r["key"] == r["true_key"])
    return table, {
        "tracks": len(rows),
        "bpm_correct": bpm_ok,
        "key_correct": key_ok,
        "errors": errors,
    }


def next_steps(root: str) -> list[str]:
    """What to try next, each command spelled to run as typed in a fresh shell."""
    from songmill.flows.hints import activate_hint, venv_command

    songmill, q = venv_command("songmill"), shlex.quote
    prefect_home = os.environ.get("PREFECT_HOME", os.path.join(root, "_prefect"))
    lines = [
        f'  DuckDB:     {songmill} query "SELECT track_id, uri, bpm, keyscale, qc_pass FROM manifest LIMIT 5" --corpus {q(root)}',
        f'              plain DuckDB, every view: {venv_command("duckdb")} {q(os.path.join(root, "songmill.duckdb"))} -c "SELECT uri, bpm, keyscale FROM manifest LIMIT 5"',
        f"  Status:     {songmill} status --corpus {q(root)}",
        f"  Plots:      {songmill} report --out {q(os.path.join(os.path.dirname(root), 'report.html'))} --corpus {q(root)}",
        f"  Prefect UI: PREFECT_HOME={q(prefect_home)} {venv_command('prefect')} server start",
        "              then open http://127.0.0.1:4200 to see the ingest and annotate flow runs",
    ]
    activate = activate_hint()
    if activate:
        lines.append(
            f"  (or `{activate}` once in a shell, then plain `songmill`, `duckdb` and `prefect`)"
        )
    return lines


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
    root = os.path.abspath(corpus_root or os.path.join(out, "corpus"))
    # The demo starts from scratch each time, so it clears what an earlier demo wrote; it checks
    # every folder first and refuses (before writing anything) one holding anything else.
    claim_demo_folder(out, OUT_ENTRIES, "working directory (--out)")
    claim_demo_folder(audio_dir, _audio_entries(audio_dir), "audio folder")
    claim_demo_folder(root, _corpus_entries(), "corpus (--corpus)", _is_songmill_corpus_file)
    _reset_demo_folder(
        out, OUT_ENTRIES - {"audio", "corpus"}
    )  # those two: checked and cleared on their own
    _reset_demo_folder(audio_dir, _audio_entries(audio_dir))
    _reset_demo_folder(root, _corpus_entries())

    print(f"1/5 generating {n_tracks} tracks with known tempo and key -> {audio_dir}")
    truth = make_demo_audio(audio_dir, n_tracks)
    from songmill.flows import demo_text

    sung = demo_text.add_sung_vocals(audio_dir, truth)
    demo_text.add_instrument_renders(audio_dir, truth)

    # The demo's settings go into its corpus's songmill.toml, so `status`, `annotate` and
    # `reprocess` on that corpus afterwards use what the demo used.
    settings = demo_settings(settings)
    write_settings(os.path.join(root, CONFIG_FILE), settings, header=SETTINGS_HEADER)

    print("2/5 ingest")
    summary = app.ingest(root, [audio_dir], settings, engine=engine)
    print(f"  {summary.new_tracks} new tracks, {summary.errors} errors")

    print("3/5 annotate: qc, music")
    for s in app.annotate(root, ["qc", "music"], settings, engine=engine):
        print(f"  {s.stage}: {s.n_ok} ok, {s.n_error} errors")

    corpus = Corpus(root, create=False)
    table, score = _summary(corpus, truth)
    print_table(table)
    print(
        f"tempo within 2 % of the truth: {score['bpm_correct']}/{score['tracks']};  key and mode exact: {score['key_correct']}/{score['tracks']}"
    )
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
    for line in next_steps(root):
        print(line)
    return 0
