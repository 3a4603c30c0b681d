"""songmill: turn a raw music collection into a text-and-lyrics-to-music training corpus, and train on it."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from songmill.annotate.settings import ConfigError
from songmill.data_schema.query import QueryFailed, QueryRefused
from songmill.data_schema.store import CorpusError
from songmill.flows import app
from songmill.flows.commands import add_window_arguments, corpus_root, settings
from songmill.flows.demo import DemoFolderError
from songmill.flows.display import print_table
from songmill.flows.executors import ENGINES, ExecutorError
from songmill.flows.hints import runnable

# Sub-commands added by other packages with `register(subparsers, common)`; imported only when
# named (or for --help), so that `songmill query` never pays for importing torch.
PLUGIN_COMMANDS = {
    "lyrics": "songmill.flows.commands.lyrics",
    "model": "songmill.flows.commands.model_checkpoints",
    "train": "songmill.flows.commands.train",
    "generate": "songmill.flows.commands.train",
    "models": "songmill.flows.commands.stage_weights",
    "status": "songmill.flows.commands.corpus",
    "report": "songmill.flows.commands.corpus",
    "captions": "songmill.flows.commands.captions",
    "dedup": "songmill.flows.commands.dedup",
    "export": "songmill.flows.commands.export",
}


def _common_parser(
    corpus_help: str = "corpus directory or fsspec URL (default $SONGMILL_CORPUS or ./corpus)",
) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--corpus", default=None, help=corpus_help)
    common.add_argument(
        "--config", default=None, help="stage settings TOML (default <corpus>/songmill.toml)"
    )
    common.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="STAGE.KEY=VALUE",
        help="override one setting (repeatable)",
    )
    return common


def _split(text: str | None) -> list[str]:
    return [s.strip() for s in (text or "").split(",") if s.strip()]


def _engine(args: argparse.Namespace) -> dict:
    engine = args.engine
    if engine is None:
        from songmill.flows.executors import default_engine

        engine, note = ("dask", None) if args.address else default_engine()
        if note and not args.quiet:
            print(note, file=sys.stderr)
    return {
        "engine": engine,
        "address": args.address,
        "workers": args.workers,
        "show_progress": not args.quiet,
    }


# -- commands: parse, call flows/app.py, print ------------------------------------------------------
def cmd_ingest(args: argparse.Namespace) -> int:
    summary = app.ingest(args.corpus, args.sources, settings(args), **_engine(args))
    for source in summary.missing_sources:
        print(f"error: source not found: {source}", file=sys.stderr)
    print(
        f"ingest {summary.run_id}: {summary.found} files found, {summary.unchanged} unchanged, "
        f"{summary.new_tracks} new tracks, {summary.new_uris} new paths of known tracks, "
        f"{summary.errors} errors -> {app.resolve_corpus_root(args.corpus)}"
    )
    return 1 if summary.missing_sources else 0


def print_summaries(summaries: list) -> None:
    for s in summaries:
        speed = (
            f", {s.audio_seconds / s.wall_s:.0f}x realtime"
            if s.wall_s > 0 and s.audio_seconds
            else ""
        )
        line = f"{s.stage} v{s.stage_version} [{s.config_hash}]: {s.n_input} to do, {s.n_ok} ok, {s.n_error} errors{speed}"
        print(line + (f"\n  unavailable: {runnable(s.unavailable)}" if s.unavailable else ""))


def cmd_annotate(args: argparse.Namespace) -> int:
    print_summaries(
        app.annotate(
            args.corpus, _split(args.stages) or None, settings(args), args.where, **_engine(args)
        )
    )
    return 0


def cmd_reprocess(args: argparse.Namespace) -> int:
    print_summaries(
        app.reprocess(
            args.corpus, _split(args.stages), args.where, settings=settings(args), **_engine(args)
        )
    )
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    print_table(app.query(args.corpus, args.sql), args.format)
    return 0


def cmd_manifest(args: argparse.Namespace) -> int:
    from songmill.data_schema.manifest import manifest_summary

    app.manifest(
        args.corpus,
        args.out,
        args.where,
        split=args.split,
        seed=args.seed,
        reproduce=args.reproduce,
        columns=args.columns,
        window=app.window_options(args.window, args.align),
    )
    print(manifest_summary(args.out))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    # No configure_prefect(): serve talks to a long-lived server, and Prefect's home (where
    # `prefect config set PREFECT_API_URL=...` keeps the URL) stays the user's.
    from songmill.flows.schedule import serve

    return serve(
        corpus_root(args),
        args.sources,
        _split(args.stages) or None,
        args.cron,
        args.config,
        args.overrides,
    )


def cmd_demo(args: argparse.Namespace) -> int:
    from songmill.annotate.settings import load_settings
    from songmill.flows.demo import run_demo

    return run_demo(
        args.out,
        args.corpus,
        args.tracks,
        train=not args.no_train,
        train_steps=args.train_steps,
        engine=args.engine,
        settings=load_settings(args.config, None, args.overrides),
    )


def cmd_compact(args: argparse.Namespace) -> int:
    merged, removed = app.compact(args.corpus, _split(args.tables) or None)
    for table, n in merged.items():
        print(f"{table}: {n} part files -> 1")
    if removed:
        print(f"removed {removed} temporaries left by killed runs")
    return 0


def cmd_stages(args: argparse.Namespace) -> int:
    for s in app.stages(settings(args)):
        if "error" in s:
            print(f"{s['stage']:12s} {s['error']}")
        else:
            print(
                f"{s['stage']:12s} v{s['version']}  config {s['config_hash']}  -> table {s['table']}  ({s['resources']})"
            )
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    print_table(app.runs(args.corpus, args.last, args.stage), args.format)
    return 0


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with `command`, only the plugin module providing it is imported."""
    common = _common_parser()
    parser = argparse.ArgumentParser(prog="songmill", description=__doc__ or "songmill")
    sub = parser.add_subparsers(dest="command", required=True)

    engine = argparse.ArgumentParser(add_help=False)
    engine.add_argument(
        "--engine",
        choices=ENGINES,
        default=None,
        help="prefect: a Prefect flow; local: in-process; dask: a Prefect flow on Dask workers "
        "(default: prefect when a Prefect server is configured (PREFECT_API_URL), else local)",
    )
    engine.add_argument(
        "--address",
        default=None,
        help="with --engine dask: scheduler of an existing cluster (tcp://HOST:8786)",
    )
    engine.add_argument(
        "--workers",
        type=int,
        default=None,
        help="with --engine dask and no --address: worker processes (default one per core)",
    )
    engine.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser(
        "ingest", parents=[common, engine], help="register audio files (incremental)"
    )
    p.add_argument("sources", nargs="+", help="files, directories, globs or fsspec URLs")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser(
        "annotate", parents=[common, engine], help="run stages on tracks lacking current results"
    )
    p.add_argument("--stages", default=None, help="comma-separated stages (default qc,music)")
    p.add_argument("--where", default=None, help="SQL condition over manifest columns")
    p.set_defaults(func=cmd_annotate)

    p = sub.add_parser(
        "reprocess",
        parents=[common, engine],
        help="re-run stages on tracks chosen by SQL, even if current",
    )
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
    p.add_argument(
        "--split",
        default=None,
        metavar="NAME=SHARE,...",
        help="add a `split` column (e.g. val=0.02); duplicate clusters never straddle splits",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the split")
    p.add_argument(
        "--columns",
        default=None,
        metavar="default|all|A,B,...",
        help="columns to write: default = all but the beat lists (beats, downbeats), all, or a list",
    )
    p.add_argument(
        "--reproduce",
        default=None,
        metavar="SIDECAR",
        help="write the rows an earlier export's sidecar JSON describes",
    )
    add_window_arguments(p)  # the exports (flows/commands/export.py) take the same options
    p.set_defaults(func=cmd_manifest)

    p = sub.add_parser(
        "serve", parents=[common], help="scheduled ingest + annotate (needs `prefect server start`)"
    )
    p.add_argument("--cron", required=True)
    p.add_argument(
        "--source",
        dest="sources",
        action="append",
        default=[],
        help="source to ingest on each run (repeatable)",
    )
    p.add_argument("--stages", default=None)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "compact", parents=[common], help="merge each table's part files into one (faster queries)"
    )
    p.add_argument("--tables", default=None, help="comma-separated tables (default all)")
    p.set_defaults(func=cmd_compact)

    p = sub.add_parser(
        "stages", parents=[common], help="list stages with their version and config hash"
    )
    p.set_defaults(func=cmd_stages)

    p = sub.add_parser(
        "runs", parents=[common], help="per stage throughput: audio hours per wall hour, per core"
    )
    p.add_argument("--last", type=int, default=None, help="only the last N runs")
    p.add_argument("--stage", default=None, help="only this stage")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.set_defaults(func=cmd_runs)

    demo_common = _common_parser(
        "the demo's corpus folder (default OUT/corpus); it must be new, empty or made by an earlier demo: "
        "the demo refuses a folder holding anything it did not make"
    )
    p = sub.add_parser(
        "demo", parents=[demo_common], help="the main job end to end on a generated corpus"
    )
    p.add_argument(
        "--engine", choices=ENGINES, default="prefect", help="how ingest and annotate run"
    )
    p.add_argument(
        "--out",
        default="./songmill-demo",
        help="working directory: audio, corpus, manifest, training run (default ./songmill-demo)",
    )
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


def _closed_pipe() -> int:
    """The reader of our output went away (`songmill query ... | head`): that is not an error.
    Point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # anywhere on the line: a traceback instead of one line
    argv = [a for a in argv if a != "--debug"]
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command)
    args = parser.parse_args(argv)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a reader gone before our last block shows here, not at interpreter exit
        return code
    except BrokenPipeError:
        return _closed_pipe()
    except (
        CorpusError,
        ConfigError,
        ExecutorError,
        QueryRefused,
        QueryFailed,
        DemoFolderError,
    ) as exc:
        if debug:
            raise
        print(runnable(f"error: {exc.args[0] if exc.args else exc}"), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # every other failure: one line on stderr (--debug for the traceback)
        if debug:
            raise
        lines = str(exc).strip().splitlines()
        print(
            runnable(
                f"error: {type(exc).__name__}: {lines[0] if lines else 'no message'} (--debug for a traceback)"
            ),
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
