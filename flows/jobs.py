"""Jobs: ingest and every set of annotate stages, one shape whatever runs them.

A job is a small picklable description (corpus root, stage names and their import targets,
settings, filters, a run id). On the driver, `plan()` returns the work as task groups (each a few
batches: minutes of audio, so that a task's orchestration cost stays small) and `finish(results)`
writes the `runs` rows and returns the summaries. Anywhere - this process, a Dask worker on
another machine - `run_group(group)` does one group's batches and returns small counts. The job
knows nothing of where it runs (flows/executors.py decides that).

Each process keeps its stages set up in `_STAGE_CACHE`, keyed by (stage name, version, config):
a model loads once per worker process, not once per task.
"""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import json
import math
import os
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from songmill.annotate import import_stage, runner, stage_target
from songmill.annotate.base import Stage, StageConfig, config_hash
from songmill.annotate.ingest import (
    FoundFile,
    IngestConfig,
    IngestSummary,
    finish_ingest,
    ingest_batch,
    ingest_batches,
    plan_ingest,
)
from songmill.annotate.settings import build_config
from songmill.data_schema.store import Corpus, new_run_id, utcnow

# A task run costs ~10-40 ms of API calls to the Prefect server; a task should carry minutes of
# audio, while a batch (the unit of decoding and of Parquet parts) stays small for memory.
TASK_MIN_AUDIO_S = 600.0
TASK_MAX_TRACKS = 512
# With several workers, at least this many groups per worker, so that a slow group near the end
# does not leave the other workers idle.
GROUPS_PER_WORKER = 4


@dataclass
class GroupResult:
    """What one task hands back: counts only, never rows."""

    counts: Any
    n_items: int
    audio_seconds: float
    wall_s: float
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)


class Job(Protocol):
    kind: str  # "ingest" | "annotate"
    resources: str  # "cpu" | "gpu": which workers may run its groups
    run_id: str

    def plan(self, parallelism: int = 1) -> list[Any]: ...

    def run_group(self, group: Any, may_repeat: bool = False) -> GroupResult: ...

    def finish(self, results: list[GroupResult]) -> Any: ...

    def describe(self) -> str: ...


class _DriverState:
    """Planning state kept on the driver; never pickled into a task."""

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_driver")}


def _duration(row: dict[str, Any]) -> float:
    return float(row.get("duration_s") or 0.0)


def group_by_weight(
    batches: list[list[Any]], weights: list[float], min_weight: float, max_items: int
) -> list[list[list[Any]]]:
    """Consecutive batches grouped so that each group weighs >= `min_weight` and holds at most
    `max_items` items (one process: few tasks, each carrying minutes of audio)."""
    groups: list[list[list[Any]]] = []
    weight = items = 0.0
    for batch, w in zip(batches, weights, strict=True):
        if not groups or weight >= min_weight or items + len(batch) > max_items:
            groups.append([])
            weight = items = 0.0
        groups[-1].append(batch)
        weight += w
        items += len(batch)
    return groups


def even_batches(rows: list[Any], weights: list[float], n: int) -> list[list[Any]]:
    """`rows` cut into at most `n` consecutive batches of nearly equal weight: each row goes to
    the batch its weight's midpoint falls in (equal weights: sizes differ by at most one)."""
    total = sum(weights)
    if total <= 0:
        weights, total = [1.0] * len(rows), float(len(rows))
    n = max(1, min(n, len(rows)))
    batches: list[list[Any]] = [[] for _ in range(n)]
    before = 0.0
    for row, w in zip(rows, weights, strict=True):
        batches[min(n - 1, int((before + w / 2) / total * n))].append(row)
        before += w
    return [b for b in batches if b]


def parallel_groups(
    rows: list[Any], weights: list[float], parallelism: int, batch_size: int
) -> list[list[list[Any]]]:
    """Groups for several workers that finish together: at least GROUPS_PER_WORKER per worker, a
    multiple of `parallelism`, of nearly equal audio. Dask hands the next group to whichever
    worker is free, so the run ends within about one group of its ideal; groups of unequal size
    (a group of two batches beside groups of one) or one group too many leave a worker idle at the
    end (160 tracks on two workers: three groups against two, a fifth of the run)."""
    total = sum(weights)
    n_groups = max(
        parallelism * GROUPS_PER_WORKER,
        math.ceil(total / TASK_MIN_AUDIO_S),
        math.ceil(len(rows) / TASK_MAX_TRACKS),
    )
    n_groups = parallelism * math.ceil(n_groups / parallelism)
    # Each group is a whole number of equal batches, each batch at most `batch_size` tracks.
    per_group = max(1, math.ceil(len(rows) / (n_groups * batch_size)))
    batches = even_batches(rows, weights, n_groups * per_group)
    return [batches[i : i + per_group] for i in range(0, len(batches), per_group)]


# -- the per-process stage cache ---------------------------------------------------------------------
_STAGE_CACHE: dict[tuple[Any, ...], Stage] = {}
# key -> (run_id, message) of a setup that found the stage unavailable: tried once per run.
_UNAVAILABLE: dict[tuple[Any, ...], tuple[str, str]] = {}
_READY: set[tuple[Any, ...]] = set()


_ALLOCATOR_TUNED = False
# glibc mallopt parameters (malloc.h); 32 MiB is glibc's own ceiling for the mmap threshold.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024


def tune_allocator() -> bool:
    """Let glibc keep freed audio buffers for reuse, as it does by default (once per process, on
    its first task group).

    Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, which also pins the mmap
    threshold at 128 KiB: every decoded clip (megabytes) is then mmap'd, page-faulted and unmapped
    again, which cost a third more CPU per track in `music` + `qc` on Dask workers than in one
    process. Returns whether the allocator was changed (False off glibc)."""
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED:
        return False
    _ALLOCATOR_TUNED = True
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this interpreter is linked against
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(_M_TRIM_THRESHOLD, 2 * _MMAP_THRESHOLD_BYTES)
    )


def _full_config_key(config: StageConfig) -> str:
    # Runtime settings (device, batch size) do not change results but do change the instance.
    blob = json.dumps(dataclasses.asdict(config), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def cached_stage(
    name: str, target: str, config: StageConfig, corpus_root: str
) -> tuple[tuple[Any, ...], Stage]:
    """This process's instance of a stage (built on first use, not yet set up)."""
    cls = import_stage(target)
    key = (name, cls.version, _full_config_key(config), target, corpus_root)
    if key not in _STAGE_CACHE:
        _STAGE_CACHE[key] = cls(config, corpus=Corpus(corpus_root, create=False))
    return key, _STAGE_CACHE[key]


def ready_stage(
    name: str, target: str, config: StageConfig, corpus_root: str, run_id: str
) -> tuple[Stage, str | None]:
    """The stage set up once per process, or why it cannot run (asked again by a later run)."""
    key, stage = cached_stage(name, target, config, corpus_root)
    if key in _READY:
        return stage, None
    failed = _UNAVAILABLE.get(key)
    if failed is not None and failed[0] == run_id:
        return stage, failed[1]
    try:
        stage.setup()
    except runner.unavailable_errors() as exc:
        _UNAVAILABLE[key] = (run_id, str(exc))
        return stage, str(exc)
    _UNAVAILABLE.pop(key, None)
    _READY.add(key)
    return stage, None


def clear_stage_cache() -> None:
    _STAGE_CACHE.clear()
    _UNAVAILABLE.clear()
    _READY.clear()


def stage_targets(stage_names: list[str]) -> dict[str, str]:
    """name -> "module:Class", resolved here so that a worker needs no registry of its own."""
    return {n: stage_target(n) for n in stage_names}


# -- annotate ----------------------------------------------------------------------------------------
@dataclass
class AnnotateGroup:
    batches: list[list[dict[str, Any]]]
    pending: dict[str, list[str]]  # stage -> the tracks of these batches it owes


@dataclass
class AnnotateJob(_DriverState):
    corpus_root: str
    stage_names: list[str]
    targets: dict[str, str]
    settings: dict[str, dict[str, Any]]
    where: str | None = None
    batch_size: int = runner.DEFAULT_BATCH_SIZE
    force: bool = False
    run_id: str = field(default_factory=new_run_id)
    resources: str = "cpu"
    kind: str = "annotate"
    # name -> the stage's config, validated once from `settings` (annotate_jobs does it before any
    # work, and before any cluster starts); tasks carry them, so no worker validates again
    configs: dict[str, StageConfig] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in self.stage_names:
            if name not in self.configs:
                self.configs[name] = build_config(
                    import_stage(self.targets[name]).config_class, name, self.settings.get(name)
                )

    def _stages(self) -> list[Stage]:
        return [
            cached_stage(n, self.targets[n], self.configs[n], self.corpus_root)[1]
            for n in self.stage_names
        ]

    def check(self) -> None:
        """Fail on stages that cannot even be built before any work (and before any cluster starts)."""
        self._stages()

    def describe(self) -> str:
        return f"annotate {','.join(self.stage_names)}"

    def plan(self, parallelism: int = 1) -> list[AnnotateGroup]:
        corpus = Corpus(self.corpus_root, create=False)
        self._driver_plan = runner.plan(
            corpus, self._stages(), self.where, self.batch_size, self.run_id, self.force
        )
        batches = self._driver_plan.batches
        if parallelism > 1:
            rows = [r for b in batches for r in b]
            groups = parallel_groups(
                rows, [_duration(r) for r in rows], parallelism, self.batch_size
            )
            self._driver_plan.batches = [b for g in groups for b in g]
        else:
            weights = [sum(_duration(r) for r in b) for b in batches]
            groups = group_by_weight(batches, weights, TASK_MIN_AUDIO_S, TASK_MAX_TRACKS)
        return [AnnotateGroup(g, self._driver_plan.pending_in(g)) for g in groups]

    @property
    def driver_plan(self) -> runner.Plan:
        return self._driver_plan

    def run_group(self, group: AnnotateGroup, may_repeat: bool = False) -> GroupResult:
        started = time.perf_counter()
        tune_allocator()
        corpus = Corpus(self.corpus_root, create=False)
        stages, unavailable = [], {}
        for name in self.stage_names:
            if group.pending.get(name):
                stage, why = ready_stage(
                    name, self.targets[name], self.configs[name], self.corpus_root, self.run_id
                )
                unavailable[name] = why
            else:
                stage = cached_stage(
                    name, self.targets[name], self.configs[name], self.corpus_root
                )[1]
            stages.append(stage)
        plan = runner.plan_for_batches(
            self.run_id, stages, group.pending, group.batches, unavailable
        )
        earlier = runner.drop_already_written(corpus, plan) if may_repeat else []
        counts = runner.run_batches(corpus, plan, group.batches) + earlier
        audio = sum(float(r.get("duration_s") or 0.0) for b in group.batches for r in b)
        return GroupResult(
            counts, sum(len(b) for b in group.batches), audio, time.perf_counter() - started
        )

    def finish(self, results: list[GroupResult]) -> list[runner.RunSummary]:
        for result in results:
            self._driver_plan.add_counts(result.counts)
        return runner.finish(Corpus(self.corpus_root, create=False), self._driver_plan)


def annotate_jobs(
    corpus_root: str,
    stage_names: list[str],
    settings: dict[str, dict[str, Any]],
    where: str | None = None,
    batch_size: int | None = None,
    force: bool = False,
    run_id: str | None = None,
) -> list[AnnotateJob]:
    """The jobs of one annotate run: consecutive stages that need the same kind of worker form one
    job, so CPU stages fan out over every worker and GPU stages go to GPU workers; a later job is
    planned after the earlier one finished, so it sees the rows that one wrote."""
    targets = stage_targets(stage_names)
    if batch_size is None:
        batch_size = int(settings.get("runner", {}).get("batch_size", runner.DEFAULT_BATCH_SIZE))
    run_id = run_id or new_run_id()
    phases: list[tuple[str, list[str]]] = []
    for name in stage_names:
        kind = "gpu" if import_stage(targets[name]).resources == "gpu" else "cpu"
        if phases and phases[-1][0] == kind:
            phases[-1][1].append(name)
        else:
            phases.append((kind, [name]))
    jobs = [
        AnnotateJob(
            corpus_root,
            names,
            {n: targets[n] for n in names},
            settings,
            where,
            batch_size,
            force,
            run_id,
            kind,
        )
        for kind, names in phases
    ]
    for job in jobs:
        job.check()
    return jobs


# -- ingest ------------------------------------------------------------------------------------------
@dataclass
class IngestJob(_DriverState):
    corpus_root: str
    sources: list[str]
    settings: dict[str, Any] | None = None
    run_id: str = field(default_factory=new_run_id)
    resources: str = "cpu"
    kind: str = "ingest"

    @property
    def config(self) -> IngestConfig:
        return build_config(IngestConfig, "ingest", self.settings)

    def check(self) -> None:
        self.config  # noqa: B018 - bad settings fail before any work

    def describe(self) -> str:
        return f"ingest {' '.join(self.sources)}"

    def plan(self, parallelism: int = 1) -> list[list[list[FoundFile]]]:
        corpus = Corpus(self.corpus_root)
        config = self.config
        self._driver_started = utcnow()
        todo, self._driver_summary = plan_ingest(corpus, self.sources, config, self.run_id)
        batches = ingest_batches(todo, config.batch_size)
        return [
            [b] for b in batches
        ]  # a group a batch: batches are large (bytes), progress stays live

    @property
    def summary(self) -> IngestSummary:
        return self._driver_summary

    def run_group(self, group: list[list[FoundFile]], may_repeat: bool = False) -> GroupResult:
        started = time.perf_counter()
        tune_allocator()
        corpus = Corpus(self.corpus_root)
        verify = self.config.verify
        summary = IngestSummary(self.run_id)
        for batch in group:
            summary.add(ingest_batch(corpus, batch, self.run_id, verify))
        return GroupResult(summary, sum(len(b) for b in group), 0.0, time.perf_counter() - started)

    def finish(self, results: list[GroupResult]) -> IngestSummary:
        for result in results:
            self._driver_summary.add(result.counts)
        finish_ingest(
            Corpus(self.corpus_root),
            self._driver_summary,
            self._driver_started,
            config_hash(self.config),
        )
        return self._driver_summary
