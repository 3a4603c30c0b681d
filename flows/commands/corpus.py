"""`songmill status` (per stage: current / stale / pending / failed) and `songmill report`
(one offline HTML file of plots), registered in flows/cli.py's PLUGIN_COMMANDS."""

from __future__ import annotations

import argparse


def cmd_status(args: argparse.Namespace) -> int:
    from songmill.flows import app
    from songmill.flows.commands import corpus_root, settings
    from songmill.flows.display import print_table

    names = [s.strip() for s in (args.stages or "").split(",") if s.strip()] or None
    table, not_installed = app.status(corpus_root(args), names, settings(args))
    for name, why in not_installed.items():
        print(f"{name}: not installed ({why})")
    print_table(table, args.format)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from songmill.flows import app
    from songmill.flows.commands import corpus_root

    print(f"report -> {app.report(corpus_root(args), args.out)}")
    return 0


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "status", parents=[common], help="per stage: tracks current / stale / pending / failed"
    )
    p.add_argument("--stages", default=None, help="comma-separated stages (default all)")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.set_defaults(func=cmd_status)

    p = subparsers.add_parser(
        "report", parents=[common], help="plots of the corpus in one self-contained HTML file"
    )
    p.add_argument("--out", default="report.html")
    p.set_defaults(func=cmd_report)
