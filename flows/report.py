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
            out.append({
                "stage": stage.name, "version": stage.version, "config": stage.config_hash, "tracks": total,
                "current": current, "stale": stale, "pending": pending, "failed": failed,
            })
    finally:
        con.close()
    return pa.Table.from_pylist(out) if out else pa.table({"stage": pa.array([], pa.string())})


# -- SVG plots ------------------------------------------------------------------------------------
W, H, PAD_L, PAD_B, PAD_T, PAD_R = 560, 240, 56, 42, 14, 14
PALETTE = ("#3b6ea5", "#d1495b", "#edae49", "#00798c", "#66a182", "#8d6a9f", "#30638e", "#ef8354")


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _axis_label(value: float) -> str:
    if abs(value) >= 1000:
        return f"{value / 1000:.3g}k"
    return f"{value:.3g}"


def _frame(body: str, y_max: float, title: str, x_labels: str = "") -> str:
    ticks = []
    for i in range(5):
        frac = i / 4
        y = H - PAD_B - frac * (H - PAD_B - PAD_T)
        ticks.append(
            f'<line x1="{PAD_L}" x2="{W - PAD_R}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e4e4e4"/>'
            f'<text x="{PAD_L - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" fill="#555">{_axis_label(frac * y_max)}</text>'
        )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="{_esc(title)}">'
        f'{"".join(ticks)}{body}{x_labels}'
        f'<line x1="{PAD_L}" x2="{W - PAD_R}" y1="{H - PAD_B}" y2="{H - PAD_B}" stroke="#888"/></svg>'
    )


def bar_chart(labels: Sequence[str], values: Sequence[float], title: str) -> str:
    if not labels:
        return _empty(title)
    n = len(labels)
    y_max = max(max(values), 1e-9) * 1.05
    slot = (W - PAD_L - PAD_R) / n
    bars, names = [], []
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        h = (H - PAD_B - PAD_T) * value / y_max
        x = PAD_L + i * slot + slot * 0.12
        bars.append(
            f'<rect x="{x:.1f}" y="{H - PAD_B - h:.1f}" width="{slot * 0.76:.1f}" height="{h:.1f}" fill="{PALETTE[0]}">'
            f"<title>{_esc(label)}: {value:g}</title></rect>"
        )
        if n <= 30:
            cx = PAD_L + (i + 0.5) * slot
            rotate = f' transform="rotate(-35 {cx:.1f} {H - PAD_B + 14})"' if n > 8 else ""
            names.append(f'<text x="{cx:.1f}" y="{H - PAD_B + 14}" text-anchor="{"end" if n > 8 else "middle"}" font-size="10" fill="#333"{rotate}>{_esc(str(label)[:18])}</text>')
    return _frame("".join(bars), y_max, title, "".join(names))


def histogram(values: Sequence[float], title: str, bins: int = 30, lo: float | None = None, hi: float | None = None) -> str:
    clean = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not clean:
        return _empty(title)
    lo = min(clean) if lo is None else lo
    hi = max(clean) if hi is None else hi
    if hi <= lo:
        hi = lo + 1.0
    counts = [0] * bins
    for v in clean:
        counts[min(bins - 1, max(0, int((v - lo) / (hi - lo) * bins)))] += 1
    y_max = max(counts) * 1.05
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
    return _frame("".join(bars), y_max, title, labels)


def line_chart(series: dict[str, list[tuple[datetime, float]]], title: str) -> str:
    points = [p for s in series.values() for p in s]
    if not points:
        return _empty(title)
    t0 = min(p[0] for p in points).timestamp()
    t1 = max(p[0] for p in points).timestamp()
    span = max(t1 - t0, 1.0)
    y_max = max(p[1] for p in points) * 1.05 or 1.0
    lines, legend = [], []
    for i, (name, pts) in enumerate(sorted(series.items())):
        color = PALETTE[i % len(PALETTE)]
        xy = " ".join(
            f"{PAD_L + (p[0].timestamp() - t0) / span * (W - PAD_L - PAD_R):.1f},{H - PAD_B - (H - PAD_B - PAD_T) * p[1] / y_max:.1f}"
            for p in sorted(pts)
        )
        lines.append(f'<polyline points="{xy}" fill="none" stroke="{color}" stroke-width="2"><title>{_esc(name)}</title></polyline>')
        legend.append(f'<text x="{PAD_L + 8}" y="{PAD_T + 14 + 13 * i}" font-size="11" fill="{color}">{_esc(name)}</text>')
    fmt = "%Y-%m-%d %H:%M" if span < 3 * 86400 else "%Y-%m-%d"
    labels = "".join(
        f'<text x="{PAD_L + f * (W - PAD_L - PAD_R):.1f}" y="{H - PAD_B + 16}" text-anchor="middle" font-size="10" fill="#333">'
        f"{datetime.fromtimestamp(t0 + f * span, UTC).strftime(fmt)}</text>"
        for f in (0, 0.5, 1)
    )
    return _frame("".join(lines) + "".join(legend), y_max, title, labels)


def _empty(title: str) -> str:
    return f'<p class="empty">No data for {_esc(title.lower())} yet.</p>'


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


def report_sections(corpus: Corpus) -> list[tuple[str, str, str]]:
    """(title, caption, svg-or-html) of every plot."""
    from songmill.data_schema.tables import TABLES

    con = corpus.connect()
    try:
        n_tracks = con.execute("SELECT count(*) FROM tracks").fetchall()[0][0]
        hours = con.execute("SELECT coalesce(sum(duration_s), 0) / 3600 FROM tracks").fetchall()[0][0]
        sections = [
            ("Durations", f"{n_tracks} tracks, {hours:.1f} hours", histogram(_column(con, "SELECT duration_s FROM tracks"), "Durations (s)")),
            ("Tempo", "BPM of the music stage", histogram(_column(con, "SELECT bpm FROM music"), "BPM", lo=40, hi=220)),
            ("Keys", "key and mode", bar_chart(*_pairs(con, "SELECT keyscale, count(*) FROM music WHERE keyscale IS NOT NULL GROUP BY 1 ORDER BY 2 DESC LIMIT 24"), "Keys")),
            ("Loudness", "integrated loudness (LUFS)", histogram(_column(con, "SELECT loudness_lufs FROM qc"), "Loudness (LUFS)")),
            ("QC reasons", "why tracks failed QC", bar_chart(*_pairs(con, "SELECT r, count(*) FROM (SELECT unnest(qc_reasons) AS r FROM qc) GROUP BY 1 ORDER BY 2 DESC LIMIT 20"), "QC reasons")),
            ("Languages", "transcript language", bar_chart(*_pairs(con, "SELECT coalesce(language, 'unknown'), count(*) FROM transcripts GROUP BY 1 ORDER BY 2 DESC LIMIT 20"), "Languages")),
        ]
        if "aesthetics" in TABLES:
            for axis, name in (("ce", "content enjoyment"), ("cu", "content usefulness"), ("pc", "production complexity"), ("pq", "production quality")):
                values = _column(con, f"SELECT aes_{axis} FROM aesthetics")
                if values:
                    sections.append((f"Aesthetics {axis.upper()}", name, histogram(values, f"Aesthetics {axis.upper()}", lo=1, hi=10)))
        sections.append(("Errors", "failures by stage and type", bar_chart(*_pairs(con, "SELECT stage || ': ' || error_type, count(*) FROM errors GROUP BY 1 ORDER BY 2 DESC LIMIT 20"), "Errors")))
        sections.append(("Near duplicates", "tracks per duplicate cluster", bar_chart(*_pairs(con, "SELECT size::VARCHAR || ' copies', count(*) FROM (SELECT cluster_id, count(*) AS size FROM near_duplicates GROUP BY 1) GROUP BY size ORDER BY size LIMIT 20"), "Near duplicates")))
        coverage: dict[str, list[tuple[datetime, float]]] = {}
        for name, spec in TABLES.items():
            if not spec.stage_table and name != "tracks":
                continue
            rows = con.execute(
                f"""SELECT day, sum(n) OVER (ORDER BY day) FROM (
                      SELECT date_trunc('hour', first_seen) AS day, count(*) AS n FROM (
                        SELECT track_id, min(created_at) AS first_seen FROM raw_{name} GROUP BY 1) GROUP BY 1) ORDER BY day"""
            ).fetchall()
            if rows:
                coverage[name] = [(r[0] if r[0].tzinfo else r[0].replace(tzinfo=UTC), float(r[1])) for r in rows]
        sections.append(("Stage coverage over time", "tracks with a result, per table", line_chart(coverage, "Stage coverage")))
    finally:
        con.close()
    return sections


def render_report(corpus: Corpus) -> str:
    cards = "".join(
        f'<section><h2>{_esc(title)}</h2><p class="cap">{_esc(caption)}</p>{plot}</section>'
        for title, caption, plot in report_sections(corpus)
    )
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>songmill corpus report</title>
<style>
body {{ font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px; color: #222; background: #fafafa; }}
main {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(590px, 1fr)); gap: 16px; }}
section {{ background: #fff; border: 1px solid #e2e2e2; border-radius: 8px; padding: 12px 14px; }}
h1 {{ font-size: 22px; margin: 0 0 4px; }} h2 {{ font-size: 16px; margin: 0; }}
.cap {{ color: #666; font-size: 12px; margin: 2px 0 8px; }} .empty {{ color: #999; font-style: italic; }}
</style></head><body>
<h1>songmill corpus report</h1><p class="cap">{_esc(corpus.root)} · {when}</p>
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
