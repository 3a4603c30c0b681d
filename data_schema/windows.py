"""Training windows cut on musical boundaries: one manifest row per window instead of per track.

`songmill manifest --window 60 --align downbeat|section` (and the exports' same options) turn each
track into windows of about `length_s` seconds (never more than 240 s, the longest audio ACE-Step's
trainers read) that start on a downbeat or on a section start and end where the next one starts:
- each window carries its own lyric slice: the lines sung inside it (the matched canonical lyrics'
  lines placed at the transcript segments they match, else the transcript segments), with a `[verse]` / `[chorus]` ... tag before each run of one section (the `tokens` stage's
  convention); a window of an instrumental, or with no sung segment, is `[instrumental]`; a track
  with lyrics but no timed transcript gets NULL (nothing tells which words fall where);
- its own tempo: from the beats inside it, kept on the track's metrical level (the music table
  has no per-segment key, so the key is the track's);
- everything else of the track's row, including `split`: windows of one track (and so of one
  duplicate cluster) never fall on both sides of a split.

A window row keeps `track_id` (the track it was cut from) and adds `window_id`, `window_index`,
`offset_s` (where it starts in the track), `track_duration_s`, `track_bpm`, `window_align` and
`window_has_vocals`; `duration_s`, `bpm`, `lyrics_tagged` and `lyrics_plain` become the window's.
The trainer (train/data.py) reads `offset_s` + `duration_s` and crops inside the window.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa

WINDOW_MAX_S = 240.0
ALIGNS = ("downbeat", "section")
INSTRUMENTAL_TAG = "[instrumental]"
# Joined to the manifest rows only while windows are cut; never written.
AUX_COLUMNS = ("_w_sections", "_w_segments", "_w_beats", "_w_downbeats", "_w_hallucination")
MIN_BEATS_FOR_TEMPO = 8

WINDOW_FIELDS = [
    pa.field("window_id", pa.string()),
    pa.field("window_index", pa.int32()),
    pa.field("offset_s", pa.float64()),
    pa.field("track_duration_s", pa.float64()),
    pa.field("track_bpm", pa.float64()),
    pa.field("window_align", pa.string()),
    pa.field("window_has_vocals", pa.bool_()),
]
# Columns a window overrides (added when the manifest lacks them).
OVERRIDDEN_FIELDS = [
    pa.field("duration_s", pa.float64()),
    pa.field("bpm", pa.float64()),
    pa.field("lyrics_tagged", pa.string()),
    pa.field("lyrics_plain", pa.string()),
]


class WindowError(ValueError):
    pass


@dataclass(frozen=True)
class WindowOptions:
    """How tracks are cut: about `length_s` seconds, starting on `align` boundaries."""

    length_s: float
    align: str = "downbeat"
    min_s: float | None = None  # shorter leftovers are dropped; default half the length

    def __post_init__(self) -> None:
        if not 0 < self.length_s <= WINDOW_MAX_S:
            raise WindowError(
                f"--window {self.length_s:g}: a length in (0, {WINDOW_MAX_S:g}] seconds"
            )
        if self.align not in ALIGNS:
            raise WindowError(f"--align {self.align!r}: one of {', '.join(ALIGNS)}")

    @property
    def shortest_s(self) -> float:
        return self.min_s if self.min_s is not None else max(1.0, self.length_s / 2)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cut_windows(
    duration_s: float,
    options: WindowOptions,
    downbeats: Sequence[float] | None,
    section_starts: Sequence[float] | None = None,
) -> list[tuple[float, float]]:
    """(start, end) of each window. Starts are boundaries (downbeats, or section starts with the
    downbeats as a fallback where no section start lies in reach); each ends on the boundary
    nearest to `length_s` after its start (or at the track's end), at most 240 s later; the next
    window starts there. No boundary at all: no window."""
    downbeats = sorted(
        {
            round(float(b), 4)
            for b in (downbeats if downbeats is not None else ())
            if 0 <= b < duration_s
        }
    )
    if options.align == "section":
        bounds = sorted(
            {
                round(float(b), 4)
                for b in (section_starts if section_starts is not None else ())
                if 0 <= b < duration_s
            }
        )
        fallback = downbeats
    else:
        bounds, fallback = downbeats, []
    if not bounds:
        bounds, fallback = fallback, []
    if not bounds:
        return []
    every = sorted(set(bounds) | set(fallback))
    shortest, longest = options.shortest_s, min(WINDOW_MAX_S, duration_s)
    out: list[tuple[float, float]] = []
    start: float | None = bounds[0]
    while start is not None and duration_s - start >= shortest:
        target = start + options.length_s
        reach = [b for b in bounds if start + shortest <= b <= start + WINDOW_MAX_S]
        if not reach:
            reach = [b for b in fallback if start + shortest <= b <= start + WINDOW_MAX_S]
        if duration_s - start <= WINDOW_MAX_S:
            reach.append(duration_s)
        end = (
            min(reach, key=lambda b: (abs(b - target), b))
            if reach
            else min(start + options.length_s, duration_s)
        )
        end = min(end, start + longest)
        out.append((start, end))
        start = next((b for b in every if b >= end - 1e-6), None)
    return out


def section_at(sections: Sequence[dict], t: float) -> str | None:
    for s in sections:
        if s["start"] <= t < s["end"]:
            return s["label"]
    return sections[-1]["label"] if sections and t >= sections[-1]["start"] else None


def tag_lines(lines: Sequence[tuple[str, str | None]]) -> str:
    """`[label]` before each run of lines of one section; blank lines between runs (the tagged
    lyrics of the lyric_sections stage and of a window's slice)."""
    blocks: list[str] = []
    previous: object = object()
    for line, label in lines:
        if label != previous:
            blocks.append(f"\n[{label or 'verse'}]")
            previous = label
        blocks.append(line)
    return "\n".join(blocks).strip()


_TAG_ONLY = re.compile(r"^\s*\[[^\]\n]*\]\s*$")
_INLINE_TAG = re.compile(r"\[[^\]\n]*\]")


def timed_lines(
    segments: Sequence[dict], canonical: str | None = None, min_similarity: float = 60.0
) -> list[tuple[str, float]]:
    """(line, time) of the words sung: the transcript segments at their middles or, given the
    matched canonical lyrics, each canonical line at the segment it matches (in order, never
    before the previous line's; several lines of one segment spread over it; a line no segment
    matches goes with the previous one), so a slice holds the canonical text, not the recogniser's."""
    heard = [
        (" ".join((seg.get("text") or "").split()), float(seg["start"]), float(seg["end"]))
        for seg in segments
    ]
    heard = [h for h in heard if h[0]]
    if not canonical or not heard:
        return [(text, 0.5 * (a + b)) for text, a, b in heard]
    from rapidfuzz import fuzz

    lines = [
        " ".join(_INLINE_TAG.sub(" ", line).split())
        for line in canonical.splitlines()
        if not _TAG_ONLY.match(line)
    ]
    lines = [line for line in lines if line]
    placed: list[int] = []
    pointer = 0
    for line in lines:
        best, best_score = None, min_similarity
        for j in range(pointer, len(heard)):
            score = fuzz.partial_ratio(line.lower(), heard[j][0].lower())
            if score > best_score:
                best, best_score = j, score
        pointer = best if best is not None else pointer
        placed.append(pointer)
    out = []
    for k, (line, j) in enumerate(zip(lines, placed, strict=True)):
        same = [i for i, p in enumerate(placed) if p == j]
        _, a, b = heard[j]
        out.append((line, a + (same.index(k) + 0.5) / len(same) * (b - a)))
    return out


def lyric_slice(
    lines: Sequence[tuple[str, float]], sections: Sequence[dict], start: float, end: float
) -> tuple[str, str]:
    """(tagged, plain) lyrics of the timed lines (`timed_lines`) sung in [start, end)."""
    sung = [(text, section_at(sections, t)) for text, t in lines if text and start <= t < end]
    if not sung:
        return INSTRUMENTAL_TAG, ""
    plain = "\n".join(line for line, _ in sung)
    if not sections:
        return plain, plain
    return tag_lines(sung), plain


def window_bpm(
    beats: Sequence[float] | None, start: float, end: float, track_bpm: float | None
) -> float | None:
    """Tempo from the beats inside the window (median interval), on the track's metrical level
    (a window of a 140 bpm song never reads 70); the track's tempo when too few beats."""
    inside = [float(b) for b in (beats if beats is not None else ()) if start <= b < end]
    if len(inside) < MIN_BEATS_FOR_TEMPO:
        return track_bpm
    intervals = sorted(b - a for a, b in zip(inside, inside[1:], strict=False) if b > a)
    if not intervals:
        return track_bpm
    bpm = 60.0 / intervals[len(intervals) // 2]
    if track_bpm:
        bpm *= 2.0 ** round(math.log2(track_bpm / bpm))
    return round(bpm, 2)


def windowing_sql(base_sql: str) -> str:
    """`base_sql`'s rows with what cutting needs (sections, transcript segments, beats), in the
    same order. Joined here, not kept in the manifest: they are its bulkiest columns."""
    return f"""SELECT m.*, _s.sections AS _w_sections, _t.segments AS _w_segments,
               _t.hallucination AS _w_hallucination, _m.beats AS _w_beats, _m.downbeats AS _w_downbeats
        FROM ({base_sql}) m
        LEFT JOIN structure _s USING (track_id)
        LEFT JOIN transcripts _t USING (track_id)
        LEFT JOIN music _m USING (track_id)
        ORDER BY m.track_id"""


def window_schema(schema: pa.Schema) -> pa.Schema:
    """The schema of window rows cut from rows of `schema` (which holds AUX_COLUMNS)."""
    fields = [f for f in schema if f.name not in AUX_COLUMNS]
    names = {f.name for f in fields}
    fields = [next((o for o in OVERRIDDEN_FIELDS if o.name == f.name), f) for f in fields]
    fields += [f for f in OVERRIDDEN_FIELDS if f.name not in names]
    fields += [f for f in WINDOW_FIELDS if f.name not in names]
    return pa.schema(fields, metadata=schema.metadata)


def track_windows(row: dict[str, Any], options: WindowOptions) -> list[dict[str, Any]]:
    """The window rows of one manifest row (holding AUX_COLUMNS)."""
    duration = row.get("duration_s")
    if not duration:
        return []
    sections = sorted(row.get("_w_sections") or [], key=lambda s: s["start"])
    segments = row.get("_w_segments")
    instrumental = bool(row.get("is_instrumental")) or row.get("lyrics_source") == "instrumental"
    timed = segments is not None and not row.get("_w_hallucination")
    canonical = row.get("lyrics") if row.get("lyrics_source") == "canonical" else None
    sung = timed_lines(segments or [], canonical) if timed else []
    spans = cut_windows(
        float(duration), options, row.get("_w_downbeats"), [s["start"] for s in sections]
    )
    base = {k: v for k, v in row.items() if k not in AUX_COLUMNS}
    out = []
    for i, (start, end) in enumerate(spans):
        if instrumental:
            tagged, plain, vocals = INSTRUMENTAL_TAG, "", False
        elif timed:
            tagged, plain = lyric_slice(sung, sections, start, end)
            vocals = bool(plain)
        else:  # lyrics without times (or none known yet): which words fall here is unknown
            tagged = plain = vocals = None
        out.append(
            base
            | {
                "window_id": f"{row['track_id']}:{i}",
                "window_index": i,
                "offset_s": round(start, 4),
                "duration_s": round(end - start, 4),
                "track_duration_s": float(duration),
                "track_bpm": row.get("bpm"),
                "bpm": window_bpm(row.get("_w_beats"), start, end, row.get("bpm")),
                "lyrics_tagged": tagged,
                "lyrics_plain": plain,
                "window_align": options.align,
                "window_has_vocals": vocals,
            }
        )
    return out


def window_batches(
    batches: Iterable[pa.RecordBatch], options: WindowOptions
) -> Iterable[pa.RecordBatch]:
    """Window rows, a batch in for a batch out (memory bounded by one batch)."""
    for batch in batches:
        schema = window_schema(batch.schema)
        rows = [w for r in batch.to_pylist() for w in track_windows(r, options)]
        yield pa.RecordBatch.from_pylist(rows, schema=schema)


def window_parquet(
    con: Any,
    source_sql: str,
    out: str,
    options: WindowOptions,
    meta: dict[str, Any] | None = None,
    batch_rows: int = 4096,
) -> int:
    """Window rows of `source_sql` (run on `con`, a corpus connection whose views include
    structure / transcripts / music) to one Parquet file, atomically; returns the rows written."""
    import json
    import os
    import uuid

    import pyarrow.parquet as pq

    out = os.path.abspath(out)
    tmp = os.path.join(os.path.dirname(out), f".tmp-{uuid.uuid4().hex}-{os.path.basename(out)}")
    rows = 0
    try:
        reader = con.sql(windowing_sql(source_sql)).to_arrow_reader(batch_rows)
        schema = window_schema(reader.schema)
        if meta:
            schema = schema.with_metadata({"songmill.manifest": json.dumps(meta)})
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            for batch in window_batches(reader, options):
                writer.write_batch(batch.cast(schema) if batch.schema != schema else batch)
                rows += batch.num_rows
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return rows
