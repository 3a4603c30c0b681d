"""songmill: turn a raw music collection into a text-and-lyrics-to-music training corpus, and train on it."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence

from songmill.data_schema.store import Corpus, CorpusError, default_corpus_root
from songmill.flows.config import ConfigError, build_config, build_stages, load_settings

# Sub-commands added by other packages with `register(subparsers, common)`; imported only when
# named (or for --help), so that `songmill query` never pays for importing torch.
PLUGIN_COMMANDS = {"lyrics": "songmill.flows.lyrics", "model": "songmill.flows.model_commands", "train": "songmill.flows.train_commands", "generate": "songmill.flows.train_commands", "models": "songmill.flows.models_commands"}


def _common_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--corpus", default=None, help="corpus directory or fsspec URL (default $SONGMILL_CORPUS or ./corpus)")
    common.add_argument("--config", default=None, help="stage settings TOML (default <corpus>/songmill.toml)")
    common.add_argument("--set", dest="overrides", action="append", default=[], metavar="STAGE.KEY=VALUE", help="override one setting (repeatable)")
    return common


def corpus_root(args: argparse.Namespace) -> str:
    return args.corpus or default_corpus_root()


def settings(args: argparse.Namespace) -> dict:
    return load_settings(args.config, corpus_root(args), args.overrides)


def _split(text: str | None) -> list[str]:
    return [s.strip() for s in (text or "").split(",") if s.strip()]


def _use_prefect(args: argparse.Namespace) -> bool:
    if args.engine == "prefect":
        from songmill.flows.prefect_env import configure_prefect

        configure_prefect(corpus_root(args))
        return True
    return False


# -- commands -----------------------------------------------------------------------------------
def cmd_ingest(args: argparse.Namespace) -> int:
    from songmill.flows.ingest import IngestConfig, ingest

    ingest_settings = settings(args).get("ingest")
    config = build_config(IngestConfig, "ingest", ingest_settings)  # bad settings fail before any work
    corpus = Corpus(corpus_root(args))
    if _use_prefect(args):
        from songmill.flows.pipeline import ingest_flow
        from songmill.flows.prefect_env import foreground_run

        with foreground_run():
            summary = ingest_flow(corpus.root, args.sources, ingest_settings, show_progress=not args.quiet)
    else:
        summary = ingest(corpus, args.sources, config)
    for source in summary.missing_sources:
        print(f"error: source not found: {source}", file=sys.stderr)
    print(
        f"ingest {summary.run_id}: {summary.found} files found, {summary.unchanged} unchanged, "
        f"{summary.new_tracks} new tracks, {summary.new_uris} new paths of known tracks, "
        f"{summary.errors} errors -> {corpus.root}"
    )
    return 1 if summary.missing_sources else 0


def annotate(args: argparse.Namespace, stage_names: list[str], where: str | None, force: bool = False) -> int:
    from songmill.annotate import runner

    stage_settings = settings(args)
    corpus = Corpus(corpus_root(args), create=False)
    stages = build_stages(stage_names, stage_settings, corpus)  # fail on bad settings before any work
    batch_size = int(stage_settings.get("runner", {}).get("batch_size", runner.DEFAULT_BATCH_SIZE))
    if _use_prefect(args):
        from songmill.flows.pipeline import annotate_flow
        from songmill.flows.prefect_env import foreground_run

        with foreground_run():
            summaries = annotate_flow(corpus.root, stage_names, stage_settings, where, batch_size, force=force, show_progress=not args.quiet)
    else:
        summaries = runner.run_stages(corpus, stages, where, batch_size=batch_size, force=force)
    for s in summaries:
        speed = f", {s.audio_seconds / s.wall_s:.0f}x realtime" if s.wall_s > 0 and s.audio_seconds else ""
        line = f"{s.stage} v{s.stage_version} [{s.config_hash}]: {s.n_input} to do, {s.n_ok} ok, {s.n_error} errors{speed}"
        print(line + (f"\n  unavailable: {s.unavailable}" if s.unavailable else ""))
    return 0


def cmd_annotate(args: argparse.Namespace) -> int:
    from songmill.annotate import DEFAULT_STAGES

    return annotate(args, _split(args.stages) or list(DEFAULT_STAGES), args.where)


def cmd_reprocess(args: argparse.Namespace) -> int:
    return annotate(args, _split(args.stages), args.where, force=True)


def cmd_query(args: argparse.Namespace) -> int:
    from songmill.flows.query import QueryRefused, run_query

    try:
        table = run_query(Corpus(corpus_root(args), create=False), args.sql)
    except QueryRefused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print_table(table, args.format)
    return 0


def print_table(table, fmt: str = "table") -> None:
    if fmt == "json":
        print(json.dumps(table.to_pylist(), default=str, indent=1))
    elif fmt == "csv":
        import pyarrow.csv as pacsv

        sink = sys.stdout.buffer
        pacsv.write_csv(table, sink)
        sink.flush()
    else:
        from rich.console import Console
        from rich.table import Table

        out = Table(show_lines=False)
        for name in table.column_names:
            out.add_column(name, overflow="fold")
        for row in table.to_pylist():
            out.add_row(*[_cell(v) for v in row.values()])
        Console(width=max(120, Console().width)).print(out)
        print(f"({table.num_rows} rows)")


def _cell(value) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def cmd_manifest(args: argparse.Namespace) -> int:
    from songmill.flows.query import export_manifest

    n = export_manifest(Corpus(corpus_root(args), create=False), args.out, args.where)
    print(f"manifest: {n} tracks -> {args.out}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from songmill.flows.prefect_env import configure_prefect

    configure_prefect(corpus_root(args))
    from songmill.flows.schedule import serve

    return serve(corpus_root(args), args.sources, _split(args.stages) or None, args.cron, args.config, args.overrides)


def cmd_demo(args: argparse.Namespace) -> int:
    from songmill.flows.demo import run_demo

    return run_demo(args)


def cmd_compact(args: argparse.Namespace) -> int:
    from songmill.data_schema.tables import TABLES

    corpus = Corpus(corpus_root(args), create=False)
    for table in _split(args.tables) or list(TABLES):
        merged = corpus.compact(table)
        if merged:
            print(f"{table}: {merged} part files -> 1")
    removed = corpus.clean_stale_temporaries()
    if removed:
        print(f"removed {removed} temporaries left by killed runs")
    return 0


def cmd_stages(args: argparse.Namespace) -> int:
    from songmill.annotate import STAGE_CLASSES

    stage_settings = settings(args)
    for name in STAGE_CLASSES:
        try:
            (stage,) = build_stages([name], stage_settings)
            print(f"{name:12s} v{stage.version}  config {stage.config_hash}  -> table {stage.table}  ({stage.resources})")
        except (ImportError, AttributeError) as exc:
            print(f"{name:12s} not installed: {exc}")
    return 0


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with `command`, only the plugin module providing it is imported."""
    common = _common_parser()
    parser = argparse.ArgumentParser(prog="songmill", description=__doc__ or "songmill")
    sub = parser.add_subparsers(dest="command", required=True)

    engine = argparse.ArgumentParser(add_help=False)
    engine.add_argument("--engine", choices=["prefect", "local"], default="prefect", help="run as a Prefect flow (default) or in-process")
    engine.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("ingest", parents=[common, engine], help="register audio files (incremental)")
    p.add_argument("sources", nargs="+", help="files, directories, globs or fsspec URLs")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("annotate", parents=[common, engine], help="run stages on tracks lacking current results")
    p.add_argument("--stages", default=None, help="comma-separated stages (default qc,music)")
    p.add_argument("--where", default=None, help="SQL condition over manifest columns")
    p.set_defaults(func=cmd_annotate)

    p = sub.add_parser("reprocess", parents=[common, engine], help="re-run stages on tracks chosen by SQL, even if current")
    p.add_argument("--where", required=True, help="SQL condition over manifest columns")
    p.add_argument("--stages", required=True)
    p.set_defaults(func=cmd_reprocess)

    p = sub.add_parser("query", parents=[common], help="read-only SQL over the corpus views")
    p.add_argument("sql")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.set_defaults(func=cmd_query)

    p = sub.add_parser("manifest", parents=[common], help="export the joined manifest for training")
    p.add_argument("--where", default=None)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_manifest)

    p = sub.add_parser("serve", parents=[common], help="scheduled ingest + annotate (needs `prefect server start`)")
    p.add_argument("--cron", required=True)
    p.add_argument("--source", dest="sources", action="append", default=[], help="source to ingest on each run (repeatable)")
    p.add_argument("--stages", default=None)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("compact", parents=[common], help="merge each table's part files into one (faster queries)")
    p.add_argument("--tables", default=None, help="comma-separated tables (default all)")
    p.set_defaults(func=cmd_compact)

    p = sub.add_parser("stages", parents=[common], help="list stages with their version and config hash")
    p.set_defaults(func=cmd_stages)

    p = sub.add_parser("demo", parents=[common], help="the main job end to end on a generated corpus")
    p.add_argument("--out", default="./songmill-demo", help="working directory for the demo corpus")
    p.add_argument("--tracks", type=int, default=12)
    p.add_argument("--train-steps", type=int, default=200)
    p.add_argument("--no-train", action="store_true", help="skip the tiny training run")
    p.set_defaults(func=cmd_demo)

    if command in PLUGIN_COMMANDS:
        wanted = {PLUGIN_COMMANDS[command]}
    elif command in sub.choices:
        wanted = set()  # a core command: import no plugin
    else:  # --help or a typo: list everything
        wanted = set(PLUGIN_COMMANDS.values())
    for module_name in sorted(wanted):
        importlib.import_module(module_name).register(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (CorpusError, ConfigError) as exc:
        print(f"error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
