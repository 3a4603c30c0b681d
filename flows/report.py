"""What the corpus looks like: per-stage status, and `songmill report`, one HTML file of plots.

The report is self-contained: every plot is inline SVG drawn here (no script, no CDN, no font
download), so it opens offline and in any browser. The numbers come from the corpus views; a
section whose table is empty says so instead of drawing an empty plot.
"""

from __future__ import annotations

import html
import math
import os
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from songmill.flows.hints import venv_command

if TYPE_CHECKING:
    import duckdb
    from songmill.annotate.base import Stage
    from songmill.data_schema.store import Corpus


# -- status ---------------------------------------------------------------------------------------
def stage_status(corpus: Corpus, stages: Sequence[Stage]) -> pa.Table:
    """Per stage, how many tracks are current (a row of this version and config whose inputs
    are still current), stale (such a row whose inputs changed), failed (a non-retryable error
    and no row) and pending (the rest: never run, retryable failures, older versions)."""
    con = corpus.connect()
    out: list[dict[str, Any]] = []
    try:
        for stage in stages:
            v, h, t = int(stage.version), stage.config_hash.replace("'", "''"), stage.table
            current, stale, failed, pending, total = con.execute(
                f"""WITH done AS (SELECT DISTINCT track_id FROM raw_{t} WHERE stage_version = {v} AND config_hash = '{h}'),
                  st AS (SELECT DISTINCT track_id FROM stale WHERE stage_table = '{t}'),
                  bad AS (SELECT DISTINCT track_id FROM raw_errors WHERE stage = '{stage.name}' AND stage_version = {v}
                          AND config_hash = '{h}' AND NOT coalesce(retryable, false)),
                  x AS (SELECT d.track_id IS NOT NULL AS d, s.track_id IS NOT NULL AS s, b.track_id IS NOT NULL AS b
                        FROM _tracks_current k LEFT JOIN done d USING (track_id) LEFT JOIN st s USING (track_id)
                        LEFT JOIN bad b USING (track_id))
                SELECT count(*) FILTER (d AND NOT s), count(*) FILTER (d AND s), count(*) FILTER (NOT d AND b),
                       count(*) FILTER (NOT d AND NOT b), count(*) FROM x"""
            ).fetchall()[0]
            out.append(
                {
                    "stage": stage.name,
                    "version": stage.version,
                    "config": stage.config_hash,
                    "tracks": total,
                    "current": current,
                    "stale": stale,
                    "pending": pending,
                    "failed": failed,
                }
            )
    finally:
        con.close()
    return pa.Table.from_pylist(out) if out else pa.table({"stage": pa.array([], pa.string())})


# -- SVG plots ------------------------------------------------------------------------------------
W, H, PAD_L, PAD_B, PAD_T, PAD_R = 560, 250, 62, 48, 14, 16
PALETTE = ("#3b6ea5", "#d1495b", "#edae49", "#00798c", "#66a182", "#8d6a9f", "#30638e", "#ef8354")
BAR_ROW, BAR_LABEL_W = 20, 190  # horizontal bar charts: one row per category, labels never cut


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _axis_label(value: float) -> str:
    if abs(value) >= 1000:
        return f"{value / 1000:.3g}k"
    return f"{value:.3g}"


def _count(value: float) -> str:
    return f"{int(round(value)):,}"


def nice_ticks(y_max: float, integer: bool, n: int = 4) -> list[float]:
    """Tick values from 0 to at least y_max on a 1 / 2 / 5 x 10^k step (whole numbers for counts)."""
    if y_max <= 0:
        return [0.0, 1.0]
    raw = y_max / n
    step = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 5, 10):
        if factor * step >= raw:
            step = factor * step
            break
    if integer:
        step = max(1.0, float(round(step)))
    top = math.ceil(y_max / step - 1e-9) * step
    return [i * step for i in range(int(round(top / step)) + 1)]


def _frame(
    body: str,
    ticks: list[float],
    title: str,
    x_labels: str = "",
    x_title: str = "",
    y_title: str = "tracks",
    integer: bool = True,
) -> str:
    y_max = ticks[-1] or 1.0
    grid = []
    for value in ticks:
        y = H - PAD_B - value / y_max * (H - PAD_B - PAD_T)
        text = _count(value) if integer else _axis_label(value)
        grid.append(
            f'<line x1="{PAD_L}" x2="{W - PAD_R}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e4e4e4"/>'
            f'<text x="{PAD_L - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" fill="#555">{text}</text>'
        )
    axis_titles = (
        f'<text x="{(PAD_L + W - PAD_R) / 2:.0f}" y="{H - 6}" text-anchor="middle" font-size="11" fill="#333">{_esc(x_title)}</text>'
        f'<text x="14" y="{(PAD_T + H - PAD_B) / 2:.0f}" text-anchor="middle" font-size="11" fill="#333" '
        f'transform="rotate(-90 14 {(PAD_T + H - PAD_B) / 2:.0f})">{_esc(y_title)}</text>'
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="{_esc(title)}">'
        f"{''.join(grid)}{body}{x_labels}{axis_titles}"
        f'<line x1="{PAD_L}" x2="{W - PAD_R}" y1="{H - PAD_B}" y2="{H - PAD_B}" stroke="#888"/></svg>'
    )


def bar_chart(
    labels: Sequence[str],
    values: Sequence[float],
    title: str,
    x_title: str = "tracks",
    empty: str | None = None,
) -> str:
    """Horizontal bars, one row per category: every label whole, every count written out."""
    if not labels:
        return _empty(title, empty)
    ticks = nice_ticks(max(values), integer=True)
    top = ticks[-1] or 1.0
    height = PAD_T + BAR_ROW * len(labels) + 40
    span = W - BAR_LABEL_W - PAD_R - 40
    rows = []
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        y = PAD_T + i * BAR_ROW
        w = span * value / top
        rows.append(
            f'<text x="{BAR_LABEL_W - 6}" y="{y + 14}" text-anchor="end" font-size="11" fill="#333">{_esc(label)}</text>'
            f'<rect x="{BAR_LABEL_W}" y="{y + 3}" width="{w:.1f}" height="{BAR_ROW - 6}" fill="{PALETTE[0]}">'
            f"<title>{_esc(label)}: {value:g}</title></rect>"
            f'<text x="{BAR_LABEL_W + w + 4:.1f}" y="{y + 14}" font-size="11" fill="#555">{_count(value)}</text>'
        )
    base = PAD_T + BAR_ROW * len(labels)
    axis = "".join(
        f'<text x="{BAR_LABEL_W + span * t / top:.1f}" y="{base + 14}" text-anchor="middle" font-size="10" fill="#777">{_count(t)}</text>'
        for t in ticks
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {height}" width="{W}" height="{height}" role="img" aria-label="{_esc(title)}">'
        f'{"".join(rows)}<line x1="{BAR_LABEL_W}" x2="{BAR_LABEL_W}" y1="{PAD_T}" y2="{base}" stroke="#888"/>{axis}'
        f'<text x="{BAR_LABEL_W + span / 2:.0f}" y="{base + 32}" text-anchor="middle" font-size="11" fill="#333">{_esc(x_title)}</text></svg>'
    )


def histogram(
    values: Sequence[float] | pa.ChunkedArray,
    title: str,
    bins: int = 30,
    lo: float | None = None,
    hi: float | None = None,
    x_title: str = "",
    empty: str | None = None,
) -> str:
    import numpy as np

    if isinstance(values, pa.ChunkedArray | pa.Array):
        array = values.drop_null().to_numpy(zero_copy_only=False).astype(float)
    else:
        array = np.array([float(v) for v in values if v is not None], dtype=float)
    array = array[np.isfinite(array)]
    if not array.size:
        return _empty(title, empty)
    lo = float(array.min()) if lo is None else lo
    hi = float(array.max()) if hi is None else hi
    if hi <= lo:
        hi = lo + 1.0
    index = np.clip(((array - lo) / (hi - lo) * bins).astype(np.int64), 0, bins - 1)
    counts = np.bincount(index, minlength=bins).tolist()
    ticks = nice_ticks(max(counts), integer=True)
    y_max = ticks[-1]
    slot = (W - PAD_L - PAD_R) / bins
    bars = [
        f'<rect x="{PAD_L + i * slot:.1f}" y="{H - PAD_B - (H - PAD_B - PAD_T) * c / y_max:.1f}" width="{slot * 0.92:.1f}" '
        f'height="{(H - PAD_B - PAD_T) * c / y_max:.1f}" fill="{PALETTE[3]}"><title>{lo + i * (hi - lo) / bins:.3g} – {lo + (i + 1) * (hi - lo) / bins:.3g}: {c}</title></rect>'
        for i, c in enumerate(counts)
    ]
    labels = "".join(
        f'<text x="{PAD_L + f * (W - PAD_L - PAD_R):.1f}" y="{H - PAD_B + 16}" text-anchor="middle" font-size="11" fill="#333">{_axis_label(lo + f * (hi - lo))}</text>'
        for f in (0, 0.25, 0.5, 0.75, 1)
    )
    return _frame("".join(bars), ticks, title, labels, x_title=x_title)


def line_chart(
    series: dict[str, list[tuple[datetime, float]]], title: str, y_title: str = "tracks"
) -> str:
    """Cumulative counts over time, one step line per series; each starts at zero just before its
    first point, so a series written in one run still shows (a rise, not a lone point), and the
    legend sits under the plot."""
    points = [p for s in series.values() for p in s]
    if not points:
        return _empty(title)
    t0 = min(p[0] for p in points).timestamp()
    t1 = max(p[0] for p in points).timestamp()
    span = max(t1 - t0, 1.0)
    t0 -= span * 0.04
    span *= 1.08
    ticks = nice_ticks(max(p[1] for p in points), integer=True)
    y_max = ticks[-1]

    def xy(t: float, v: float) -> str:
        return f"{PAD_L + (t - t0) / span * (W - PAD_L - PAD_R):.1f},{H - PAD_B - (H - PAD_B - PAD_T) * v / y_max:.1f}"

    lines, legend = [], []
    for i, (name, pts) in enumerate(sorted(series.items(), key=lambda kv: -kv[1][-1][1])):
        color = PALETTE[i % len(PALETTE)]
        pts = sorted(pts)
        path = [xy(t0, 0.0), xy(pts[0][0].timestamp(), 0.0)]
        last = 0.0
        for when, value in pts:
            path += [xy(when.timestamp(), last), xy(when.timestamp(), value)]
            last = value
        path.append(xy(t0 + span, last))
        lines.append(
            f'<polyline points="{" ".join(path)}" fill="none" stroke="{color}" stroke-width="2">'
            f"<title>{_esc(name)}: {_count(last)}</title></polyline>"
        )
        legend.append(f'<span style="color:{color}">&#9632; {_esc(name)} ({_count(last)})</span>')
    fmt = "%H:%M:%S" if span < 3600 else "%m-%d %H:%M" if span < 3 * 86400 else "%Y-%m-%d"
    labels = "".join(
        f'<text x="{PAD_L + f * (W - PAD_L - PAD_R):.1f}" y="{H - PAD_B + 16}" text-anchor="middle" font-size="10" fill="#333">'
        f"{datetime.fromtimestamp(t0 + f * span, UTC).strftime(fmt)}</text>"
        for f in (0.04, 0.5, 0.96)
    )
    svg = _frame("".join(lines), ticks, title, labels, x_title="time (UTC)", y_title=y_title)
    return svg + f'<p class="legend">{" ".join(legend)}</p>'


def _empty(title: str, text: str | None = None) -> str:
    return f'<p class="empty">{_esc(text or f"No data for {title.lower()} yet.")}</p>'


# -- the report -----------------------------------------------------------------------------------
def _column(con: duckdb.DuckDBPyConnection, sql: str) -> list[Any]:
    try:
        return [r[0] for r in con.execute(sql).fetchall()]
    except Exception:  # a view that this corpus does not have data for
        return []


def _pairs(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[list[str], list[float]]:
    try:
        rows = con.execute(sql).fetchall()
    except Exception:
        return [], []
    return [str(r[0]) for r in rows], [float(r[1]) for r in rows]


def _one(con: duckdb.DuckDBPyConnection, sql: str, default: Any = 0) -> Any:
    try:
        rows = con.execute(sql).fetchall()  # not fetchone(): duckdb 2.0 keeps that result open
    except Exception:
        return default
    row = rows[0] if rows else None
    return default if row is None or row[0] is None else row[0]


def _has_column(con: duckdb.DuckDBPyConnection, view: str, column: str) -> bool:
    try:
        return column in [r[0] for r in con.execute(f"DESCRIBE {view}").fetchall()]
    except Exception:
        return False


def _pct(part: float, whole: float) -> str:
    return f"{100.0 * part / whole:.1f} %" if whole else "–"


def _fetch(con: duckdb.DuckDBPyConnection, sql: str) -> pa.Table | None:
    """One query's columns (each table is read once: a view re-resolves its rows per query)."""
    try:
        return con.sql(sql).to_arrow_table()
    except Exception:  # a view this corpus has no data for
        return None


def _values(table: pa.Table | None, column: str) -> list[Any]:
    return (
        table.column(column).to_pylist()
        if table is not None and column in table.column_names
        else []
    )


def _array(table: pa.Table | None, column: str) -> pa.ChunkedArray | list:
    """A column as Arrow (histograms bin it in numpy), or [] when the table or column is absent."""
    return table.column(column) if table is not None and column in table.column_names else []


def _value_counts(
    arrays: list[Any], limit: int, field: str | None = None
) -> tuple[list[str], list[float]]:
    """The most frequent values of list columns (flattened; `field` of struct items), in Arrow."""
    import pyarrow.compute as pc

    totals: dict[str, int] = {}
    for array in arrays:
        if not isinstance(array, pa.ChunkedArray) or not len(array):
            continue
        flat = pc.list_flatten(array)
        if field is not None:
            flat = pc.struct_field(flat, field)
        for item in pc.value_counts(flat.drop_null()).to_pylist():
            totals[str(item["values"])] = totals.get(str(item["values"]), 0) + int(item["counts"])
    top = sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
    return [k for k, _ in top], [float(n) for _, n in top]


def _true_count(table: pa.Table | None, column: str) -> int:
    import pyarrow.compute as pc

    if table is None or column not in table.column_names:
        return 0
    return int(pc.sum(pc.cast(pc.fill_null(table.column(column), False), pa.int64())).as_py() or 0)


def gather(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """Every number the report shows, each stage table read once."""
    from songmill.data_schema.tables import TABLES

    data: dict[str, Any] = {
        "tracks": _fetch(con, "SELECT duration_s FROM tracks"),
        "qc": _fetch(con, "SELECT qc_pass, loudness_lufs FROM qc"),
        "music": _fetch(con, "SELECT * EXCLUDE (beats, downbeats, inputs) FROM music"),
        "aesthetics": _fetch(
            con, "SELECT aes_ce, aes_cu, aes_pc, aes_pq, aesthetics_pass FROM aesthetics"
        ),
        "structure": _fetch(con, "SELECT n_sections, sections FROM structure"),
        "captions": _fetch(con, "SELECT genres, moods, instruments FROM captions"),
    }
    counts = {name: (data[name].num_rows if data.get(name) is not None else None) for name in data}
    data["coverage"] = {
        name: counts[name]
        if counts.get(name) is not None
        else _one(con, f"SELECT count(*) FROM {name}")
        for name, spec in TABLES.items()
        if spec.stage_table
    }
    errors = _fetch(con, "SELECT stage, error_type, coalesce(track_id, uri) AS what FROM errors")
    data["errors"] = errors
    return data


def summary(corpus: Corpus) -> dict[str, Any]:
    """The header's numbers: tracks, hours, pass rates, errors and every stage's coverage."""
    con = corpus.connect()
    try:
        return _summary(gather(con))
    finally:
        con.close()


def _summary(data: dict[str, Any]) -> dict[str, Any]:
    from collections import Counter

    import pyarrow.compute as pc

    durations = _array(data["tracks"], "duration_s")
    errors = data["errors"]
    stages = Counter(_values(errors, "stage"))
    return {
        "tracks": data["tracks"].num_rows if data["tracks"] is not None else 0,
        "hours": float(pc.sum(durations).as_py() or 0.0) / 3600 if len(durations) else 0.0,
        "qc": data["qc"].num_rows if data["qc"] is not None else 0,
        "qc_pass": _true_count(data["qc"], "qc_pass"),
        "aesthetics": data["aesthetics"].num_rows if data["aesthetics"] is not None else 0,
        "aesthetics_pass": _true_count(data["aesthetics"], "aesthetics_pass"),
        "errors": errors.num_rows if errors is not None else 0,
        "error_tracks": len(set(_values(errors, "what"))),
        "error_stages": dict(stages.most_common()),
        "coverage": data["coverage"],
    }


def summary_html(s: dict[str, Any]) -> str:
    tracks = s["tracks"]
    facts = [
        ("tracks", _count(tracks)),
        ("hours of audio", f"{s['hours']:.1f}" if s["hours"] >= 10 else f"{s['hours']:.2f}"),
        (
            "QC pass",
            f"{_pct(s['qc_pass'], s['qc'])} of {_count(s['qc'])}" if s["qc"] else "not run",
        ),
        (
            "aesthetics pass",
            f"{_pct(s['aesthetics_pass'], s['aesthetics'])} of {_count(s['aesthetics'])}"
            if s["aesthetics"]
            else "not run",
        ),
        (
            "errors",
            f"{_count(s['errors'])} ({_count(s['error_tracks'])} files)"
            + (
                ": " + ", ".join(f"{k} {_count(v)}" for k, v in list(s["error_stages"].items())[:4])
                if s["errors"]
                else ""
            ),
        ),
    ]
    cells = "".join(
        f'<div class="fact"><b>{_esc(v)}</b><span>{_esc(k)}</span></div>' for k, v in facts
    )
    rows = "".join(
        f'<tr><td>{_esc(name)}</td><td class="n">{_count(n)}</td><td class="n">{_pct(n, tracks)}</td>'
        f'<td><div class="meter"><div style="width:{min(100.0, 100.0 * n / tracks) if tracks else 0:.1f}%"></div></div></td></tr>'
        for name, n in sorted(s["coverage"].items(), key=lambda kv: -kv[1])
    )
    return (
        f'<div class="facts">{cells}</div><table class="coverage"><tr><th>stage table</th><th>tracks</th>'
        f"<th>coverage</th><th></th></tr>{rows}</table>"
    )


def _counts(values: list[Any], limit: int) -> tuple[list[str], list[float]]:
    from collections import Counter

    top = sorted(
        Counter(v for v in values if v is not None).items(), key=lambda kv: (-kv[1], str(kv[0]))
    )[:limit]
    return [str(k) for k, _ in top], [float(n) for _, n in top]


def report_sections(corpus: Corpus) -> list[tuple[str, str, str]]:
    """(title, caption, svg-or-html) of every plot."""
    con = corpus.connect()
    try:
        return _sections(con, gather(con))
    finally:
        con.close()


def _sections(con: duckdb.DuckDBPyConnection, data: dict[str, Any]) -> list[tuple[str, str, str]]:
    head = _summary(data)
    n_tracks, hours = head["tracks"], head["hours"]
    hours_text = (
        f"{hours:.1f} hours"
        if hours >= 10
        else f"{hours * 60:.0f} minutes"
        if hours < 1
        else f"{hours:.2f} hours"
    )
    all_passed = (
        f"Every one of the {head['qc']:,} tracks with a QC result passed." if head["qc"] else None
    )
    music = data["music"]
    sections = [
        (
            "Durations",
            f"{n_tracks:,} tracks, {hours_text}",
            histogram(_array(data["tracks"], "duration_s"), "Durations", x_title="duration (s)"),
        ),
        (
            "Tempo",
            "BPM of the music stage",
            histogram(_array(music, "bpm"), "Tempo", lo=40, hi=220, x_title="BPM"),
        ),
    ]
    agreement = _array(music, "bpm_agreement")
    if len(agreement) and agreement.null_count < len(agreement):  # music v7 rows record it
        sections.append(
            (
                "BPM agreement",
                "how well the tempo estimators agree (1 = all the same)",
                histogram(agreement, "BPM agreement", lo=0, hi=1, x_title="agreement"),
            )
        )
    else:
        sections.append(
            (
                "BPM confidence",
                "the music stage's tempo confidence (no music rows record bpm_agreement yet: music v7 does)",
                histogram(
                    _array(music, "bpm_confidence"),
                    "BPM confidence",
                    lo=0,
                    hi=1,
                    x_title="confidence",
                ),
            )
        )
    sections += [
        ("Keys", "key and mode", bar_chart(*_counts(_values(music, "keyscale"), 24), "Keys")),
        (
            "Loudness",
            "integrated loudness",
            histogram(_array(data["qc"], "loudness_lufs"), "Loudness", x_title="loudness (LUFS)"),
        ),
        (
            "QC reasons",
            "why tracks failed QC",
            bar_chart(
                *_pairs(
                    con,
                    "SELECT r, count(*) FROM (SELECT unnest(qc_reasons) AS r FROM qc) GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 20",
                ),
                "QC reasons",
                empty=all_passed,
            ),
        ),
        (
            "Languages",
            "transcript language",
            bar_chart(
                *_pairs(
                    con,
                    "SELECT coalesce(language, 'unknown'), count(*) FROM transcripts GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 20",
                ),
                "Languages",
            ),
        ),
    ]
    aesthetics = data["aesthetics"]
    if aesthetics is None or not aesthetics.num_rows:  # one card saying so, not four empty ones
        sections.append(
            (
                "Aesthetics",
                "Audiobox Aesthetics scores (CE, CU, PC, PQ)",
                _empty("aesthetics", "No aesthetics scores yet (the aesthetics stage)."),
            )
        )
    else:
        for axis, name in (
            ("ce", "content enjoyment"),
            ("cu", "content usefulness"),
            ("pc", "production complexity"),
            ("pq", "production quality"),
        ):
            sections.append(
                (
                    f"Aesthetics {axis.upper()}",
                    f"Audiobox Aesthetics: {name}",
                    histogram(
                        _array(aesthetics, f"aes_{axis}"),
                        f"Aesthetics {axis.upper()}",
                        lo=1,
                        hi=10,
                        x_title="score (1-10)",
                    ),
                )
            )
    captions, structure = data["captions"], data["structure"]
    sections += [
        (
            "Caption genres",
            "genres the captions name (normalised)",
            bar_chart(*_value_counts([_array(captions, "genres")], 20), "Caption genres"),
        ),
        (
            "Caption moods and instruments",
            "the most frequent caption tags",
            bar_chart(
                *_value_counts([_array(captions, "moods"), _array(captions, "instruments")], 20),
                "Caption moods and instruments",
            ),
        ),
        (
            "Structure sections",
            "section labels of the structure stage",
            bar_chart(
                *_value_counts([_array(structure, "sections")], 12, field="label"),
                "Structure sections",
                x_title="sections",
            ),
        ),
        (
            "Sections per track",
            "number of sections",
            histogram(
                _array(structure, "n_sections"), "Sections per track", bins=20, x_title="sections"
            ),
        ),
        (
            "Errors",
            "failures by stage and type",
            bar_chart(
                *_counts(
                    [
                        f"{s}: {t}"
                        for s, t in zip(
                            _values(data["errors"], "stage"),
                            _values(data["errors"], "error_type"),
                            strict=True,
                        )
                    ],
                    20,
                ),
                "Errors",
                x_title="errors",
                empty="No errors.",
            ),
        ),
    ]
    exact = _one(
        con,
        "SELECT count(*) FROM (SELECT track_id FROM sources WHERE track_id IS NOT NULL GROUP BY 1 HAVING count(DISTINCT uri) > 1)",
    )
    sizes = _pairs(
        con,
        "SELECT size, count(*) FROM (SELECT cluster_id, count(*) AS size FROM near_duplicates GROUP BY 1) GROUP BY size ORDER BY size LIMIT 20",
    )
    clusters = int(sum(sizes[1]))
    in_clusters = int(sum(int(k) * v for k, v in zip(*sizes, strict=True)))
    sections.append(
        (
            "Duplicates",
            f"{exact:,} tracks found at several paths (exact copies); {in_clusters:,} tracks in {clusters:,} near-duplicate clusters",
            bar_chart(
                [f"{k} tracks" for k in sizes[0]],
                sizes[1],
                "Duplicates",
                x_title="clusters",
                empty=f"No near-duplicate clusters (run the fingerprint stage and `{venv_command()} dedup`).",
            ),
        )
    )
    sections.append(
        (
            "Stage coverage over time",
            "tracks with a result, per table (cumulative)",
            line_chart(_coverage_over_time(con), "Stage coverage"),
        )
    )
    return sections


def _coverage_over_time(
    con: duckdb.DuckDBPyConnection, max_points: int = 200
) -> dict[str, list[tuple[datetime, float]]]:
    """Per table, tracks with a first result by time: buckets of a width that gives at most
    `max_points` steps over the whole span (seconds for a demo, days for a long-lived corpus)."""
    from songmill.data_schema.tables import TABLES

    names = [n for n, spec in TABLES.items() if spec.stage_table or n == "tracks"]
    firsts = " UNION ALL ".join(
        f"SELECT '{n}' AS t, track_id, min(created_at) AS first_seen FROM raw_{n} GROUP BY track_id"
        for n in names
    )
    try:
        lo, hi = con.execute(
            f"SELECT epoch(min(first_seen)), epoch(max(first_seen)) FROM ({firsts})"
        ).fetchall()[0]
    except Exception:
        return {}
    if lo is None:
        return {}
    width = max((hi - lo) / max_points, 1.0)
    rows = con.execute(
        f"""SELECT t, b, sum(n) OVER (PARTITION BY t ORDER BY b) FROM (
              SELECT t, floor((epoch(first_seen) - {lo}) / {width}) AS b, count(*) AS n FROM ({firsts}) GROUP BY ALL)
            ORDER BY t, b"""
    ).fetchall()
    out: dict[str, list[tuple[datetime, float]]] = {}
    for table, bucket, total in rows:
        out.setdefault(table, []).append(
            (
                datetime.fromtimestamp(lo + (bucket + 1) * width if hi > lo else lo, UTC),
                float(total),
            )
        )
    return out


def render_report(corpus: Corpus) -> str:
    con = corpus.connect()
    try:
        data = gather(con)
        head = summary_html(_summary(data))
        cards = "".join(
            f'<section><h2>{_esc(title)}</h2><p class="cap">{_esc(caption)}</p>{plot}</section>'
            for title, caption, plot in _sections(con, data)
        )
    finally:
        con.close()
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>songmill corpus report</title>
<style>
body {{ font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px; color: #222; background: #fafafa; }}
main {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(590px, 1fr)); gap: 16px; }}
section, .summary {{ background: #fff; border: 1px solid #e2e2e2; border-radius: 8px; padding: 12px 14px; }}
.summary {{ margin-bottom: 16px; display: flex; gap: 32px; flex-wrap: wrap; align-items: flex-start; }}
.facts {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr)); gap: 10px; flex: 1 1 480px; }}
.fact b {{ display: block; font-size: 20px; }} .fact span {{ color: #666; font-size: 12px; }}
table.coverage {{ border-collapse: collapse; font-size: 12px; }} .coverage td, .coverage th {{ padding: 2px 8px; text-align: left; }}
.coverage td.n {{ text-align: right; font-variant-numeric: tabular-nums; }}
.meter {{ width: 120px; height: 8px; background: #eee; border-radius: 4px; }} .meter div {{ height: 8px; background: #3b6ea5; border-radius: 4px; }}
h1 {{ font-size: 22px; margin: 0 0 4px; }} h2 {{ font-size: 16px; margin: 0; }}
.cap {{ color: #666; font-size: 12px; margin: 2px 0 8px; }} .empty {{ color: #999; font-style: italic; }}
.legend {{ font-size: 12px; margin: 4px 0 0 {PAD_L}px; display: flex; flex-wrap: wrap; gap: 4px 14px; }}
</style></head><body>
<h1>songmill corpus report</h1><p class="cap">{_esc(corpus.root)} · {when}</p>
<div class="summary">{head}</div>
<main>{cards}</main></body></html>
"""


def write_report(corpus: Corpus, out: str) -> str:
    """Write the report atomically; returns its absolute path."""
    out = os.path.abspath(out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = os.path.join(os.path.dirname(out), f".tmp-{uuid.uuid4().hex}.html")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(render_report(corpus))
    os.replace(tmp, out)
    return out
