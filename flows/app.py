"""The operations behind the CLI: what `songmill ingest`, `annotate`, `query`... do, as functions
that take plain values and return results. The CLI (flows/cli.py) only parses arguments and
prints what these return; the demo and scripts call them directly.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
from songmill.annotate import build_stages, runner
from songmill.annotate.ingest import IngestSummary
from songmill.annotate.settings import load_settings
from songmill.data_schema.store import Corpus, default_corpus_root
from songmill.data_schema.views import quote
from songmill.flows.executors import make_executor


def resolve_corpus_root(corpus_root: str | None) -> str:
    return corpus_root or default_corpus_root()


def settings_for(
    corpus_root: str | None, config: str | None = None, overrides: Sequence[str] = ()
) -> dict[str, dict[str, Any]]:
    """Stage settings: the TOML file (default <corpus>/songmill.toml) with `stage.key=value` overrides."""
    return load_settings(config, resolve_corpus_root(corpus_root), list(overrides))


def ingest(
    corpus_root: str | None,
    sources: Sequence[str],
    settings: dict[str, dict[str, Any]] | None = None,
    engine: str = "prefect",
    address: str | None = None,
    workers: int | None = None,
    show_progress: bool = True,
) -> IngestSummary:
    """Register audio from files, directories, globs or fsspec URLs (incremental)."""
    corpus = Corpus(resolve_corpus_root(corpus_root))
    executor = make_executor(engine, corpus.root, address, workers, show_progress)
    return executor.ingest(corpus.root, list(sources), (settings or {}).get("ingest"))


def annotate(
    corpus_root: str | None,
    stage_names: Sequence[str] | None = None,
    settings: dict[str, dict[str, Any]] | None = None,
    where: str | None = None,
    force: bool = False,
    engine: str = "prefect",
    address: str | None = None,
    workers: int | None = None,
    show_progress: bool = True,
) -> list[runner.RunSummary]:
    """Run stages (default: those needing no weights) on the tracks lacking a current result."""
    from songmill.annotate import DEFAULT_STAGES

    corpus = Corpus(resolve_corpus_root(corpus_root), create=False)
    names = list(stage_names or DEFAULT_STAGES)
    executor = make_executor(engine, corpus.root, address, workers, show_progress)
    return executor.annotate(corpus.root, names, settings or {}, where, force)


def reprocess(
    corpus_root: str | None, stage_names: Sequence[str], where: str, **kwargs: Any
) -> list[runner.RunSummary]:
    """Run stages again on the tracks chosen by SQL, even where their results are current."""
    return annotate(corpus_root, stage_names, where=where, force=True, **kwargs)


def query(corpus_root: str | None, sql: str) -> pa.Table:
    """Read-only SQL over the corpus views (raises QueryRefused for anything that could write)."""
    from songmill.data_schema.query import run_query

    return run_query(Corpus(resolve_corpus_root(corpus_root), create=False), sql)


def manifest(corpus_root: str | None, out: str, where: str | None = None, **options: Any) -> int:
    """Export the joined manifest (optionally filtered) to one Parquet file; returns its rows."""
    from songmill.data_schema.manifest import export_manifest

    return export_manifest(
        Corpus(resolve_corpus_root(corpus_root), create=False), out, where, **options
    )


def window_options(length_s: float | None, align: str = "downbeat") -> Any:
    """`--window` / `--align` as data_schema.windows.WindowOptions (None: one row per track)."""
    if length_s is None:
        return None
    from songmill.data_schema.windows import WindowOptions

    return WindowOptions(length_s, align)


def window_manifest(corpus_root: str | None, manifest: str, out: str, window: Any) -> int:
    """The rows of a manifest file cut into windows (their sections, transcript segments and
    beats read from the corpus); returns the windows written."""
    from songmill.data_schema.views import literal
    from songmill.data_schema.windows import window_parquet

    corpus = Corpus(resolve_corpus_root(corpus_root), create=False)
    con = corpus.connect()
    try:
        return window_parquet(
            con, f"SELECT * FROM read_parquet({literal(os.path.abspath(manifest))})", out, window
        )
    finally:
        con.close()


def compact(
    corpus_root: str | None, tables: Sequence[str] | None = None
) -> tuple[dict[str, int], int]:
    """Merge each table's part files; returns (table -> parts merged, stale temporaries removed)."""
    from songmill.data_schema.tables import TABLES

    corpus = Corpus(resolve_corpus_root(corpus_root), create=False)
    merged = {}
    for table in tables or list(TABLES):
        # The manifest snapshot joins every table: write it once, after the last table.
        n = corpus.compact(table, manifest=False)
        if n:
            merged[table] = n
    if merged:
        corpus.refresh_manifest_snapshot()
    return merged, corpus.clean_stale_temporaries()


def stages(settings: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Every known stage with its version, config hash, table and resources (or why not installed)."""
    from songmill.annotate import STAGE_CLASSES

    out = []
    for name in STAGE_CLASSES:
        try:
            (stage,) = build_stages([name], settings or {})
        except (ImportError, AttributeError) as exc:
            out.append({"stage": name, "error": f"not installed: {exc}"})
            continue
        out.append(
            {
                "stage": name,
                "version": stage.version,
                "config_hash": stage.config_hash,
                "table": stage.table,
                "resources": stage.resources,
            }
        )
    return out


def runs(corpus_root: str | None, last: int | None = None, stage: str | None = None) -> pa.Table:
    """Per stage: tracks done, errors, audio hours, wall hours, audio hours per wall hour and per core."""
    from songmill.flows.throughput import throughput

    return throughput(
        Corpus(resolve_corpus_root(corpus_root), create=False), last=last, stage=stage
    )


def status(
    corpus_root: str | None,
    stage_names: Sequence[str] | None = None,
    settings: dict[str, dict[str, Any]] | None = None,
) -> tuple[pa.Table, dict[str, str]]:
    """Per stage (default all): tracks current / stale / pending / failed; and the stages that
    could not be built, with why (an optional package absent)."""
    from songmill.annotate import STAGE_CLASSES
    from songmill.flows.report import stage_status

    built, not_installed = [], {}
    for name in stage_names or list(STAGE_CLASSES):
        try:
            built.extend(build_stages([name], settings or {}))
        except (ImportError, AttributeError) as exc:
            not_installed[name] = str(exc)
    return stage_status(
        Corpus(resolve_corpus_root(corpus_root), create=False), built
    ), not_installed


def report(corpus_root: str | None, out: str) -> str:
    """Plots of the corpus in one self-contained HTML file; returns its path."""
    from songmill.flows.report import write_report

    return write_report(Corpus(resolve_corpus_root(corpus_root), create=False), out)


def caption_tags(corpus_root: str | None, column: str) -> tuple[int, Any, str | None]:
    """(captioned tracks, Counter of the normalised tags in `column`, a warning when one tag
    covers most tracks)."""
    from songmill.annotate.caption import tag_distribution

    corpus = Corpus(resolve_corpus_root(corpus_root), create=False)
    rows = corpus.sql(f"SELECT {quote(column)} FROM captions").to_pylist()
    counts, warning = tag_distribution(rows, column)
    return len(rows), counts, warning


def dedup(
    corpus_root: str | None, settings: dict[str, dict[str, Any]] | None = None, full: bool = False
) -> Any:
    """Bring the near-duplicate index up to date (`full`: rebuild it); returns the build record."""
    from songmill.annotate.fingerprint import update_index

    (stage,) = build_stages(["fingerprint"], settings or {})
    return update_index(
        Corpus(resolve_corpus_root(corpus_root), create=False), stage.config, full=full
    )


def lyrics_database(
    corpus_root: str | None, settings: dict[str, dict[str, Any]] | None = None, create: bool = False
) -> Any:
    """The corpus lyrics database, opened with the same [lyrics] settings as the stage (so that
    the index the stage opens is this one)."""
    from songmill.annotate.lyrics import LyricsConfig
    from songmill.annotate.lyrics_db import LyricsDB
    from songmill.annotate.settings import build_config

    config = build_config(LyricsConfig, "lyrics", (settings or {}).get("lyrics"))
    return LyricsDB(Corpus(resolve_corpus_root(corpus_root), create=create), config.index_params())


def train_tokenizer(corpus_root: str | None, out: str, vocab_size: int) -> int:
    """Train the lyric BPE tokenizer on every lyric text the corpus knows; returns how many texts
    (0: none, nothing written)."""
    from songmill.annotate.features import corpus_lyric_texts
    from songmill.model.lyric_tokens import LyricTokenizer

    texts = corpus_lyric_texts(Corpus(resolve_corpus_root(corpus_root), create=False))
    if texts:
        LyricTokenizer.train(texts, vocab_size=vocab_size).save(out)
    return len(texts)


def train_config(
    kind: str,
    resume: str | None = None,
    config_path: str | None = None,
    corpus_root: str | None = None,
    overrides: Sequence[str] = (),
    flags: dict[str, Any] | None = None,
) -> Any:
    """A training run's TrainConfig: defaults < the resumed checkpoint's settings < the [train]
    table of the settings (`config_path`, default <corpus>/songmill.toml, with `overrides`) <
    `flags` (TrainConfig fields the command line set)."""
    from songmill.train.checkpoint import load_checkpoint
    from songmill.train.config import TrainConfig, with_legacy_values

    config = TrainConfig(kind=kind)
    if resume:
        saved = load_checkpoint(resume, with_state=False).trainer["full_config"]
        config = config.updated(with_legacy_values(saved))
    settings = load_settings(config_path, corpus_root, list(overrides))
    config = config.updated(settings.get("train", {}))
    return config.updated({**(flags or {}), "kind": kind})


def train_run_dir(kind: str, run_dir: str | None = None, resume: str | None = None) -> str:
    """Where a training run writes: `run_dir`, else the resumed run's, else runs/<kind>-<time>."""
    import time

    if run_dir:
        return run_dir
    if resume:
        from songmill.train.checkpoint import resolve_checkpoint

        return os.path.dirname(os.path.dirname(resolve_checkpoint(resume)))
    return os.path.join("runs", f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}")


def dit_manifest(
    manifest: str,
    dcae_checkpoint: str | None,
    config_path: str | None = None,
    corpus_root: str | None = None,
    overrides: Sequence[str] = (),
) -> str:
    """The manifest the DiT trains on (train.prepare.training_manifest), its features computed
    with the settings' [features] table into the corpus (default ./corpus) where it has none."""
    from songmill.train.prepare import training_manifest

    corpus = corpus_root or default_corpus_root()
    settings = load_settings(config_path, corpus, list(overrides))
    return training_manifest(
        manifest,
        dcae_checkpoint,
        corpus,
        settings.get("features", {}),
        world_size=int(os.environ.get("WORLD_SIZE", "1")),
    )
