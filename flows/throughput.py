"""Throughput per stage from the `runs` table: what `songmill runs` prints and what each Prefect
flow run publishes as a markdown artifact.

Wall hours are each run's finished - started (the elapsed time of that stage's job); core hours
are the seconds the stage itself spent on tracks, summed over every worker process. So audio
hours per wall hour is the run's speed, and per core hour the speed of one busy core.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa
from songmill.data_schema.store import Corpus

COLUMNS = (
    "stage",
    "runs",
    "tracks_done",
    "errors",
    "audio_hours",
    "wall_hours",
    "core_hours",
    "audio_h_per_wall_h",
    "audio_h_per_core_h",
)


def throughput(
    corpus: Corpus,
    last: int | None = None,
    stage: str | None = None,
    run_ids: Sequence[str] | None = None,
) -> pa.Table:
    """One row per stage over the chosen runs (the last `last` runs, or the given run ids)."""
    conditions, params = [], []
    if run_ids is not None:
        conditions.append("run_id IN (SELECT unnest(?::VARCHAR[]))")
        params.append(list(run_ids))
    if last is not None:
        conditions.append(
            "run_id IN (SELECT run_id FROM runs GROUP BY run_id ORDER BY max(finished_at) DESC LIMIT ?)"
        )
        params.append(int(last))
    if stage is not None:
        conditions.append("stage = ?")
        params.append(stage)
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    return corpus.sql(
        f"""WITH r AS (SELECT * FROM runs {where}),
           s AS (
             SELECT stage, count(DISTINCT run_id) AS runs, sum(n_ok)::BIGINT AS tracks_done,
                    sum(n_error)::BIGINT AS errors, sum(audio_seconds) / 3600 AS audio_hours,
                    sum(epoch(finished_at) - epoch(started_at)) / 3600 AS wall_hours,
                    sum(wall_s) / 3600 AS core_hours
             FROM r GROUP BY stage)
           SELECT *, audio_hours / nullif(wall_hours, 0) AS audio_h_per_wall_h,
                  audio_hours / nullif(core_hours, 0) AS audio_h_per_core_h
           FROM s ORDER BY stage""",
        params,
    )


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def as_markdown(table: pa.Table) -> str:
    lines = ["| " + " | ".join(table.column_names) + " |", "|" + "---|" * table.num_columns]
    for row in table.to_pylist():
        lines.append("| " + " | ".join(_fmt(v) for v in row.values()) + " |")
    return "\n".join(lines)


def throughput_markdown(corpus: Corpus, **selection) -> str:
    table = throughput(corpus, **selection)
    return "## songmill throughput\n\n" + (
        as_markdown(table) if table.num_rows else "(no stage had work)"
    )
