"""Runs stages over the tracks that lack a current result.

`plan` asks DuckDB which tracks each stage still owes (an anti-join against the stage table and the
non-retryable errors, keyed by stage version and config hash), `run_batch` decodes each track of a
batch once and passes it through every stage that owes it, writing one Parquet part per stage per
batch, and `finish` writes the `runs` rows. `run_stages` does all three in-process; the annotate job
(flows/jobs.py) calls the same functions from any executor, where a worker rebuilds a small plan for
its share of the batches (`plan_for_batches`) and hands back `StageCounts`.

`error_row` and `stamp_row` are the only places where an `errors` row or a stage row's bookkeeping
columns are made; ingest uses them too.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pyarrow as pa
from songmill.annotate.base import Stage, StageUnavailable, Track
from songmill.data_schema.store import Corpus, new_run_id, utcnow

DEFAULT_BATCH_SIZE = 16
MAX_MESSAGE_CHARS = 2000


def unavailable_errors() -> tuple[type[BaseException], ...]:
    """What a stage's `setup` raises when it cannot run here at all: retryable, never fatal.
    (model.weights imports torch, so only a stage being set up pays for it.)"""
    from songmill.model.weights import WeightsMissing

    return (StageUnavailable, WeightsMissing)


# -- the two row helpers ---------------------------------------------------------------------------
def error_row(
    *,
    stage: str,
    stage_version: int | None,
    config_hash: str | None,
    track_id: str | None,
    uri: str | None,
    exc: BaseException,
    retryable: bool,
    run_id: str,
    created_at: datetime | None = None,
) -> dict[str, Any]:
    """One `errors` row: which track, which stage (version + config), what went wrong."""
    message = str(exc) or repr(exc)
    return {
        "track_id": track_id,
        "uri": uri,
        "stage": stage,
        "stage_version": stage_version,
        "config_hash": config_hash,
        "error_type": type(exc).__name__,
        "message": message[:MAX_MESSAGE_CHARS],
        "retryable": retryable,
        "run_id": run_id,
        "created_at": created_at or utcnow(),
    }


def stamp_row(
    row: Mapping[str, Any], *, run_id: str, created_at: datetime | None = None, **keys: Any
) -> dict[str, Any]:
    """A result row with its bookkeeping columns: the key columns given (track_id, stage_version,
    config_hash, ...), the run that wrote it and when."""
    stamped = dict(row)
    stamped.update(keys)
    stamped["run_id"] = run_id
    stamped["created_at"] = created_at or utcnow()
    return stamped


def stage_error_row(
    run_id: str, stage: Stage, track: Track, exc: BaseException, retryable: bool
) -> dict[str, Any]:
    return error_row(
        stage=stage.name,
        stage_version=stage.version,
        config_hash=stage.config_hash,
        track_id=track.track_id,
        uri=track.uri,
        exc=exc,
        retryable=retryable,
        run_id=run_id,
    )


# -- plan --------------------------------------------------------------------------------------------
@dataclass
class StageCounts:
    """What one stage did over some batches: small and picklable, it travels back from workers."""

    stage: str
    n_ok: int = 0
    n_error: int = 0
    audio_seconds: float = 0.0
    wall_s: float = 0.0
    unavailable: str | None = None


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

    def counts(self) -> StageCounts:
        return StageCounts(
            self.stage.name,
            self.n_ok,
            self.n_error,
            self.audio_seconds,
            self.wall_s,
            self.unavailable,
        )

    def add(self, counts: StageCounts) -> None:
        self.n_ok += counts.n_ok
        self.n_error += counts.n_error
        self.audio_seconds += counts.audio_seconds
        self.wall_s += counts.wall_s
        if counts.unavailable and not self.unavailable:
            self.unavailable = counts.unavailable


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
    # track_id -> table -> row: inputs a caller already holds (a manifest's joined row), used only
    # where the corpus has no current row of that table (they carry no lineage key, so none is
    # recorded for them)
    given_inputs: dict[str, dict[str, Mapping[str, Any]]] = field(default_factory=dict)

    @property
    def n_tracks(self) -> int:
        return sum(len(b) for b in self.batches)

    def pending_in(self, batches: Iterable[list[dict[str, Any]]]) -> dict[str, list[str]]:
        """Stage name -> the tracks of `batches` it owes (what a worker needs to redo the plan)."""
        ids = {row["track_id"] for batch in batches for row in batch}
        return {p.stage.name: sorted(p.pending & ids) for p in self.stages}

    def add_counts(self, counts: Iterable[StageCounts]) -> None:
        by_name = {p.stage.name: p for p in self.stages}
        for c in counts:
            by_name[c.stage].add(c)


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
    with corpus.connect() as con:
        return _pending(con, stage, _candidates(where), produced_in_run, force)


def _candidates(where: str | None, chosen: bool = False) -> str:
    """The tracks a plan chooses from: without --where the track ids alone (the manifest's joins
    cost time), else the manifest's tracks that match; `chosen`: only those in `_chosen_ids` too
    (a list of track ids registered on the connection, e.g. a training manifest's)."""
    base = (
        f"SELECT m.track_id FROM manifest m WHERE ({where})"
        if where
        else "SELECT track_id FROM _track_ids"
    )
    return (
        f"SELECT track_id FROM ({base}) WHERE track_id IN (SELECT track_id FROM _chosen_ids)"
        if chosen
        else base
    )


def _pending(
    con: Any, stage: Stage, candidates: str, produced_in_run: set[str], force: bool
) -> set[str]:
    """pending_track_ids on an open connection, choosing among the track ids `candidates` gives."""
    table = stage.table
    # A result is current when a row of this version and config exists and its lineage still
    # holds (the input rows it was computed from are the current rows of their tables); a stale
    # result is redone. A non-retryable error of this version and config counts as done too.
    # (The current row, not the history: a snapshot scan instead of every row ever written; a
    # current row of a newer stage version also counts, as this version's row would never show.)
    # A stage that reads no other table records no lineage: its rows cannot be stale (and the
    # check reads the whole table again: half a second per stage at two million tracks).
    stale = (
        f" OR m.track_id IN (SELECT s.track_id FROM stale s WHERE s.stage_table = '{table}')"
        if input_tables(stage)
        else ""
    )
    conditions = (
        []
        if force
        else [
            f"""((NOT EXISTS (SELECT 1 FROM {table} r WHERE r.track_id = m.track_id
              AND ((r.stage_version = {int(stage.version)} AND r.config_hash = '{stage.config_hash}')
                   OR r.stage_version > {int(stage.version)}))
            AND NOT EXISTS (SELECT 1 FROM raw_errors e WHERE e.track_id = m.track_id
              AND e.stage = '{stage.name}' AND e.stage_version = {int(stage.version)}
              AND e.config_hash = '{stage.config_hash}' AND NOT coalesce(e.retryable, false))){stale})""",
        ]
    )
    for required in stage.requires:
        if required not in produced_in_run:
            conditions.append(f"EXISTS (SELECT 1 FROM {required} q WHERE q.track_id = m.track_id)")
    result = con.sql(
        f"SELECT m.track_id FROM ({candidates}) m WHERE {' AND '.join(conditions) or 'true'}"
    ).to_arrow_table()
    return set(result.column("track_id").to_pylist())


def _requires_in_run(stages: Sequence[Stage]) -> list[set[str]]:
    """Per stage, the required tables that an earlier stage of the same run produces."""
    produced: set[str] = set()
    out = []
    for stage in stages:
        out.append(set(stage.requires) & produced)
        produced.add(stage.table)
    return out


def plan(
    corpus: Corpus,
    stages: Sequence[Stage],
    where: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    run_id: str | None = None,
    force: bool = False,
    track_ids: Sequence[str] | None = None,
) -> Plan:
    """What a run owes: the tracks (of `where`, and of `track_ids` when given) lacking each
    stage's current result, in batches."""
    progress = []
    with (
        corpus.connect() as con
    ):  # one connection, and the candidate tracks read once for all stages
        if track_ids is not None:
            con.register(
                "_chosen_ids", pa.table({"track_id": pa.array(list(track_ids), pa.string())})
            )
        candidates = _candidates(where, chosen=track_ids is not None)
        if len(stages) > 1:
            con.execute(f"CREATE TEMP TABLE _plan_candidates AS {candidates}")
            candidates = "SELECT track_id FROM _plan_candidates"
        for i, (stage, in_run) in enumerate(zip(stages, _requires_in_run(stages), strict=True)):
            produced = {s.table for s in stages[:i]}
            progress.append(
                StageProgress(stage, _pending(con, stage, candidates, produced, force), in_run)
            )
        wanted = set().union(*(p.pending for p in progress)) if progress else set()
        rows = (
            con.sql(
                "SELECT * FROM tracks WHERE track_id IN (SELECT unnest(?::VARCHAR[])) ORDER BY track_id",
                params=[sorted(wanted)],
            )
            .to_arrow_table()
            .to_pylist()
            if wanted
            else []
        )
    batches = [rows[i : i + batch_size] for i in range(0, len(rows), max(1, batch_size))]
    return Plan(run_id or new_run_id(), progress, batches)


def plan_for_batches(
    run_id: str,
    stages: Sequence[Stage],
    pending: Mapping[str, Iterable[str]],
    batches: list[list[dict[str, Any]]],
    unavailable: Mapping[str, str | None] | None = None,
) -> Plan:
    """The share of a plan that one worker runs: its batches and what each stage owes in them."""
    unavailable = unavailable or {}
    progress = [
        StageProgress(stage, set(pending.get(stage.name, ())), in_run, unavailable.get(stage.name))
        for stage, in_run in zip(stages, _requires_in_run(stages), strict=True)
    ]
    return Plan(run_id, progress, batches)


def drop_already_written(corpus: Corpus, plan: Plan) -> list[StageCounts]:
    """Forget tracks that this run already wrote a row or an error for: a batch group that runs
    again (its worker died, Dask retried it elsewhere) never writes a result twice. Returns what
    the earlier attempt did, so that the run's counts stay whole."""
    ids = sorted(set().union(*(p.pending for p in plan.stages)) if plan.stages else set())
    durations = {r["track_id"]: float(r.get("duration_s") or 0.0) for b in plan.batches for r in b}
    earlier = []
    with corpus.connect() as con:  # one connection for every query: opening it is the cost
        for p in plan.stages:
            if not p.pending:
                continue
            ok = {
                r[0]
                for r in con.execute(
                    f"SELECT track_id FROM raw_{p.stage.table} WHERE run_id = ? AND track_id IN (SELECT unnest(?::VARCHAR[]))",
                    [plan.run_id, ids],
                ).fetchall()
            } & p.pending
            failed = {
                r[0]
                for r in con.execute(
                    "SELECT track_id FROM raw_errors WHERE run_id = ? AND stage = ? AND track_id IN (SELECT unnest(?::VARCHAR[]))",
                    [plan.run_id, p.stage.name, ids],
                ).fetchall()
            } & p.pending - ok
            p.pending -= ok | failed
            earlier.append(
                StageCounts(
                    p.stage.name, len(ok), len(failed), sum(durations.get(t, 0.0) for t in ok)
                )
            )
    return earlier


def setup_stages(plan: Plan) -> None:
    """Load each stage's models once. A stage that cannot run says why, once, and is skipped."""
    for progress in plan.stages:
        if not progress.pending:
            continue
        try:
            progress.stage.setup()
        except unavailable_errors() as exc:
            progress.unavailable = str(exc)


# -- run -------------------------------------------------------------------------------------------
def _current_rows(corpus: Corpus, table: str, track_ids: list[str]) -> dict[str, dict[str, Any]]:
    rows = corpus.sql(
        f"SELECT * FROM {table} WHERE track_id IN (SELECT unnest(?::VARCHAR[]))", [track_ids]
    ).to_pylist()
    return {r["track_id"]: r for r in rows}


def run_batch(corpus: Corpus, plan: Plan, batch: list[dict[str, Any]]) -> list[StageCounts]:
    """Pass one batch through every stage that owes its tracks; returns what each stage did."""
    tracks = {row["track_id"]: Track(row) for row in batch}
    produced: dict[str, dict[str, dict[str, Any]]] = {}  # table -> track_id -> row, this batch
    counts: list[StageCounts] = []
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
            done = StageCounts(stage.name, unavailable=progress.unavailable)
            started = time.perf_counter()
            if progress.unavailable is not None:
                errors = [
                    stage_error_row(
                        plan.run_id, stage, t, StageUnavailable(progress.unavailable), True
                    )
                    for t in todo
                ]
                corpus.write("errors", errors)
                done.n_error = len(errors)
            else:
                _attach_inputs(corpus, stage, todo, produced, plan.given_inputs)
                results = _process_isolating_failures(stage, todo)
                if len(results) != len(todo):
                    raise RuntimeError(
                        f"stage {stage.name} returned {len(results)} results for {len(todo)} tracks"
                    )
                rows, errors = [], []
                now = utcnow()
                for track, result in zip(todo, results, strict=True):
                    if isinstance(result, BaseException):
                        errors.append(stage_error_row(plan.run_id, stage, track, result, False))
                        continue
                    rows.append(
                        stamp_row(
                            result,
                            track_id=track.track_id,
                            stage_version=stage.version,
                            config_hash=stage.config_hash,
                            inputs=lineage(stage, track),
                            run_id=plan.run_id,
                            created_at=now,
                        )
                    )
                    done.audio_seconds += track.duration_s
                # The stage's rows land before its errors: a kill in between loses only error rows,
                # which the re-run writes again.
                corpus.write(stage.table, rows)
                corpus.write("errors", errors)
                produced.setdefault(stage.table, {}).update({r["track_id"]: r for r in rows})
                done.n_ok, done.n_error = len(rows), len(errors)
                done.wall_s = time.perf_counter() - started
            progress.add(
                StageCounts(stage.name, done.n_ok, done.n_error, done.audio_seconds, done.wall_s)
            )
            counts.append(done)
    finally:
        for track in tracks.values():
            track.release_audio()
    return counts


def run_batches(
    corpus: Corpus, plan: Plan, batches: Iterable[list[dict[str, Any]]]
) -> list[StageCounts]:
    """`run_batch` over several batches; returns each stage's totals over them."""
    totals: dict[str, StageCounts] = {
        p.stage.name: StageCounts(p.stage.name, unavailable=p.unavailable) for p in plan.stages
    }
    for batch in batches:
        for c in run_batch(corpus, plan, batch):
            t = totals[c.stage]
            t.n_ok += c.n_ok
            t.n_error += c.n_error
            t.audio_seconds += c.audio_seconds
            t.wall_s += c.wall_s
    return list(totals.values())


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


def input_tables(stage: Stage) -> tuple[str, ...]:
    """The stage tables a stage's rows are computed from (what its lineage records)."""
    return tuple(dict.fromkeys((*stage.reads, *stage.requires)))


def lineage(stage: Stage, track: Track) -> list[dict[str, Any]]:
    """The input rows a result was computed from: for each stage table the stage reads or
    requires, the key of the row it was given (views.py `stale` compares them with the current
    rows later)."""
    out = []
    for table in input_tables(stage):
        row = track.inputs.get(table)
        if row is not None and "stage_version" in row:
            out.append(
                {
                    "table": table,
                    "stage_version": row["stage_version"],
                    "config_hash": row["config_hash"],
                    "run_id": row["run_id"],
                }
            )
    return out


def _attach_inputs(
    corpus: Corpus,
    stage: Stage,
    tracks: list[Track],
    produced: dict[str, dict[str, dict[str, Any]]],
    given: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
) -> None:
    ids = [t.track_id for t in tracks]
    for table in input_tables(stage):
        stored = _current_rows(corpus, table, ids)
        stored.update(produced.get(table, {}))
        for track in tracks:
            if track.track_id in stored:
                track.inputs[table] = stored[track.track_id]
            elif given and table in given.get(track.track_id, {}):
                track.inputs[table] = given[track.track_id][table]


# -- finish ----------------------------------------------------------------------------------------
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
            rows.append(
                row | {"host": host, "started_at": plan.started_at, "finished_at": finished}
            )
    corpus.write("runs", rows)
    for p in plan.stages:  # corpus-wide work after a stage's rows are in (the duplicate index)
        if p.n_ok:
            p.stage.after_run(corpus)
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
    track_ids: Sequence[str] | None = None,
    given_inputs: dict[str, dict[str, Mapping[str, Any]]] | None = None,
) -> list[RunSummary]:
    """Run `stages` (in order) over every track that lacks their current results, in-process:
    all tracks, those `where` selects, and only those in `track_ids` when given. `given_inputs`
    (track_id -> table -> row) stand in where the corpus has no current input row."""
    the_plan = plan(corpus, stages, where, batch_size, run_id, force, track_ids)
    the_plan.given_inputs = given_inputs or {}
    setup_stages(the_plan)
    done = 0
    for batch in the_plan.batches:
        run_batch(corpus, the_plan, batch)
        done += len(batch)
        if on_batch is not None:
            on_batch(done, the_plan.n_tracks)
    return finish(corpus, the_plan)
