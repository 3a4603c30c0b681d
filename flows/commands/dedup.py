"""`songmill dedup`: bring the near-duplicate index up to date (incremental), or `--full` rebuild it
from every fingerprint; registered in flows/cli.py's PLUGIN_COMMANDS."""

from __future__ import annotations

import argparse


def cmd_dedup(args: argparse.Namespace) -> int:
    from songmill.flows import app
    from songmill.flows.commands import corpus_root, settings

    build = app.dedup(corpus_root(args), settings(args), full=args.full)
    print(
        f"{build.mode} index build {build.index_id}: {build.new_fingerprints} fingerprints matched "
        f"({build.fingerprints} indexed), {build.candidate_pairs} candidate pairs, {build.edges} copies, "
        f"{build.clustered_tracks} tracks in duplicate clusters"
    )
    return 0


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser(
        "dedup", parents=[common], help="update the near-duplicate clusters (--full: rebuild)"
    )
    p.add_argument(
        "--full",
        action="store_true",
        help="rebuild from every fingerprint instead of matching new ones",
    )
    p.set_defaults(func=cmd_dedup)
