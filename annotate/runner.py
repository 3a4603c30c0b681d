"""Runs stages over the tracks that lack a current result.

`plan` asks DuckDB which tracks each stage still owes (an anti-join against the stage table and the
non-retryable errors, keyed by stage version and config hash), `run_batch` decodes each track of a
batch once and passes it through every stage that owes it, writing one Parquet part per stage per
batch, and `finish` writes the `runs` rows. `run_stages` does all three in-process; the Prefect flow
in flows/annotate_flow.py calls the same functions, one task per batch.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from songmill.annotate.base import Stage, StageUnavailable, Track
from songmill.data_schema.store import Corpus, new_run_id, utcnow
from songmill.model.weights import WeightsMissing

DEFAULT_BATCH_SIZE = 16
MAX_MESSAGE_CHARS = 2000


@dataclass
class StageProgress:
    stage: Stage
    pending: set[str]
    # Required tables that an earlier stage of this run produces: checked per batch, not in SQL.
    requires_in_run: set[str] = field(default_factory=set)
    unavailable: str | None = None
    n_ok: int = 0
    n_error: int = 0
    audio_seconds: float = 0.0
    wall_s: float = 0.0


@dataclass
class RunSummary:
    run_id: str
    stage: str
    stage_version: int
    config_hash: str
    n_input: int
    n_ok: int
    n_error: int
    audio_seconds: float
    wall_s: float
    unavailable: str | None = None


@dataclass
class Plan:
    """What one annotate run owes: the tracks to visit, in batches, and each stage's share."""

    run_id: str
    stages: list[StageProgress]
    batches: list[list[dict[str, Any]]]
    started_at: datetime = field(default_factory=utcnow)

    @property
    def n_tracks(self) -> int:
        return sum(len(b) for b in self.batches)


def _sql_list(values: Sequence[str]) -> str:
    return ", ".join("'" + v.replace("'", "''") + "'" for v in values)


def pending_track_ids(
    corpus: Corpus,
    stage: Stage,
    where: str | None = None,
    produced_in_run: set[str] = frozenset(),
    force: bool = False,
) -> set[str]:
    """Tracks (optionally filtered by SQL over the manifest) with no current result for `stage`.

    A current result is a row with this stage version and config hash, or a non-retryable error
    row for the same. Tables listed in `stage.requires` must hold a row for the track, unless an
    earlier stage of this run produces that table. With `force` (reprocess), current results do
    not count: every selected track is done again and the newer row wins in the views.
    """
    table = stage.table
    conditions = [] if force else [
        f"""NOT EXISTS (SELECT 1 FROM raw_{table} r WHERE r.track_id = m.track_id
              AND r.stage_version = {int(stage.version)} AND r.config_hash = '{stage.config_hash}')""",
        f"""NOT EXISTS (SELECT 1 FROM raw_errors e WHERE e.track_id = m.track_id
              AND e.stage = '{stage.name}' AND e.stage_version = {int(stage.version)}
              AND e.config_hash = '{stage.config_hash}' AND NOT coalesce(e.retryable, false))""",
    ]
    for required in stage.requires:
        if required not in produced_in_run:
            conditions.append(f"EXISTS (SELECT 1 FROM {required} q WHERE q.track_id = m.track_id)")
    if where:
        conditions.append(f"({where})")
    result = corpus.sql(f"SELECT m.track_id FROM manifest m WHERE {' AND '.join(conditions) or 'true'}")
    return set(result.column("track_id").to_pylist())


def plan(
    corpus: Corpus,
    stages: Sequence[Stage],
    where: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    run_id: str | None = None,
    force: bool = False,
) -> Plan:
    progress = []
    produced: set[str] = set()
    for stage in stages:
        pending = pending_track_ids(corpus, stage, where, produced, force)
        progress.append(StageProgress(stage, pending, set(stage.requires) & produced))
        produced.add(stage.table)
    wanted = set().union(*(p.pending for p in progress)) if progress else set()
    rows = corpus.sql(
        "SELECT * FROM tracks WHERE track_id IN (SELECT unnest(?::VARCHAR[])) ORDER BY track_id",
        [sorted(wanted)],
    ).to_pylist()
    batches = [rows[i : i + batch_size] for i in range(0, len(rows), max(1, batch_size))]
    return Plan(run_id or new_run_id(), progress, batches)


def setup_stages(plan: Plan) -> None:
    """Load each stage's models once. A stage that cannot run says why, once, and is skipped."""
    for progress in plan.stages:
        if not progress.pending:
            continue
        try:
            progress.stage.setup()
        except (StageUnavailable, WeightsMissing) as exc:
            progress.unavailable = str(exc)


def _current_rows(corpus: Corpus, table: str, track_ids: list[str]) -> dict[str, dict[str, Any]]:
    rows = corpus.sql(f"SELECT * FROM {table} WHERE track_id IN (SELECT unnest(?::VARCHAR[]))", [track_ids]).to_pylist()
    return {r["track_id"]: r for r in rows}


def _error_row(run_id: str, stage: Stage, track: Track, exc: BaseException, retryable: bool) -> dict[str, Any]:
    message = str(exc) or repr(exc)
    return {
        "track_id": track.track_id,
        "uri": track.uri,
        "stage": stage.name,
        "stage_version": stage.version,
        "config_hash": stage.config_hash,
        "error_type": type(exc).__name__,
        "message": message[:MAX_MESSAGE_CHARS],
        "retryable": retryable,
        "run_id": run_id,
        "created_at": utcnow(),
    }


def run_batch(corpus: Corpus, plan: Plan, batch: list[dict[str, Any]]) -> dict[str, tuple[int, int]]:
    """Pass one batch through every stage that owes its tracks; returns stage -> (ok, errors)."""
    tracks = {row["track_id"]: Track(row) for row in batch}
    produced: dict[str, dict[str, dict[str, Any]]] = {}  # table -> track_id -> row, this batch
    counts: dict[str, tuple[int, int]] = {}
    try:
        for progress in plan.stages:
            stage = progress.stage
            todo = [
                tracks[t]
                for t in sorted(progress.pending & tracks.keys())
                if all(t in produced.get(r, {}) for r in progress.requires_in_run)
            ]
            if not todo:
                continue
            started = time.perf_counter()
            if progress.unavailable is not None:
                errors = [_error_row(plan.run_id, stage, t, StageUnavailable(progress.unavailable), True) for t in todo]
                corpus.write("errors", errors)
                progress.n_error += len(errors)
                counts[stage.name] = (0, len(errors))
                continue
            _attach_inputs(corpus, stage, todo, produced)
            results = _process_isolating_failures(stage, todo)
            if len(results) != len(todo):
                raise RuntimeError(f"stage {stage.name} returned {len(results)} results for {len(todo)} tracks")
            rows, errors = [], []
            now = utcnow()
            for track, result in zip(todo, results, strict=True):
                if isinstance(result, BaseException):
                    errors.append(_error_row(plan.run_id, stage, track, result, False))
                    continue
                row = dict(result)
                row.update(
                    track_id=track.track_id,
                    stage_version=stage.version,
                    config_hash=stage.config_hash,
                    run_id=plan.run_id,
                    created_at=now,
                )
                rows.append(row)
                progress.audio_seconds += track.duration_s
            # The stage's rows land before its errors: a kill in between loses only error rows,
            # which the re-run writes again.
            corpus.write(stage.table, rows)
            corpus.write("errors", errors)
            produced.setdefault(stage.table, {}).update({r["track_id"]: r for r in rows})
            progress.n_ok += len(rows)
            progress.n_error += len(errors)
            progress.wall_s += time.perf_counter() - started
            counts[stage.name] = (len(rows), len(errors))
    finally:
        for track in tracks.values():
            track.release_audio()
    return counts


def _process_isolating_failures(stage: Stage, tracks: list[Track]) -> list[Any]:
    """A batched `process` that raises is retried track by track, so one bad track costs one row."""
    try:
        return stage.process(tracks)
    except Exception:
        results: list[Any] = []
        for track in tracks:
            try:
                results.extend(stage.process([track]))
            except Exception as exc:
                results.append(exc)
        return results


def _attach_inputs(corpus: Corpus, stage: Stage, tracks: list[Track], produced: dict[str, dict[str, dict[str, Any]]]) -> None:
    ids = [t.track_id for t in tracks]
    for table in stage.reads:
        stored = _current_rows(corpus, table, ids)
        stored.update(produced.get(table, {}))
        for track in tracks:
            if track.track_id in stored:
                track.inputs[table] = stored[track.track_id]


def finish(corpus: Corpus, plan: Plan) -> list[RunSummary]:
    """Write one `runs` row per stage that had work, and return the summaries."""
    finished = utcnow()
    host = socket.gethostname()
    summaries, rows = [], []
    for p in plan.stages:
        summary = RunSummary(
            run_id=plan.run_id,
            stage=p.stage.name,
            stage_version=p.stage.version,
            config_hash=p.stage.config_hash,
            n_input=len(p.pending),
            n_ok=p.n_ok,
            n_error=p.n_error,
            audio_seconds=p.audio_seconds,
            wall_s=p.wall_s,
            unavailable=p.unavailable,
        )
        summaries.append(summary)
        if p.pending:
            row = {k: v for k, v in summary.__dict__.items() if k != "unavailable"}
            rows.append(row | {"host": host, "started_at": plan.started_at, "finished_at": finished})
    corpus.write("runs", rows)
    corpus.compact_if_needed([p.stage.table for p in plan.stages] + ["errors", "runs"])
    return summaries


def run_stages(
    corpus: Corpus,
    stages: Sequence[Stage],
    where: str | None = None,
    run_id: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_batch: Callable[[int, int], None] | None = None,
    force: bool = False,
) -> list[RunSummary]:
    """Run `stages` (in order) over every track that lacks their current results, in-process."""
    the_plan = plan(corpus, stages, where, batch_size, run_id, force)
    setup_stages(the_plan)
    done = 0
    for batch in the_plan.batches:
        run_batch(corpus, the_plan, batch)
        done += len(batch)
        if on_batch is not None:
            on_batch(done, the_plan.n_tracks)
    return finish(corpus, the_plan)
