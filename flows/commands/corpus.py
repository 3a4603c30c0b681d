"""`songmill status` (per stage: current / stale / pending / failed) and `songmill report`
(one offline HTML file of plots), registered in flows/cli.py's PLUGIN_COMMANDS."""

from __future__ import annotations

import argparse


def cmd_status(args: argparse.Namespace) -> int:
    from songmill.annotate import STAGE_CLASSES, build_stages
    from songmill.data_schema.store import Corpus
    from songmill.flows.commands import corpus_root, settings
    from songmill.flows.display import print_table
    from songmill.flows.report import stage_status

    names = [s.strip() for s in (args.stages or "").split(",") if s.strip()] or list(STAGE_CLASSES)
    stages = []
    for name in names:
        try:
            stages.extend(build_stages([name], settings(args)))
        except (ImportError, AttributeError) as exc:  # a stage whose optional package is absent
            print(f"{name}: not installed ({exc})")
    print_table(stage_status(Corpus(corpus_root(args), create=False), stages), args.format)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from songmill.data_schema.store import Corpus
    from songmill.flows.commands import corpus_root
    from songmill.flows.report import write_report

    path = write_report(Corpus(corpus_root(args), create=False), args.out)
    print(f"report -> {path}")
    return 0


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser("status", parents=[common], help="per stage: tracks current / stale / pending / failed")
    p.add_argument("--stages", default=None, help="comma-separated stages (default all)")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.set_defaults(func=cmd_status)

    p = subparsers.add_parser("report", parents=[common], help="plots of the corpus in one self-contained HTML file")
    p.add_argument("--out", default="report.html")
    p.set_defaults(func=cmd_report)
