"""`songmill dedup`: bring the near-duplicate index up to date (incremental), or `--full` rebuild it
from every fingerprint; registered in flows/cli.py's PLUGIN_COMMANDS."""

from __future__ import annotations

import argparse


def cmd_dedup(args: argparse.Namespace) -> int:
    from songmill.annotate import build_stages
    from songmill.annotate.fingerprint import update_index
    from songmill.data_schema.store import Corpus
    from songmill.flows.commands import corpus_root, settings

    (stage,) = build_stages(["fingerprint"], settings(args))
    build = update_index(Corpus(corpus_root(args), create=False), stage.config, full=args.full)
    print(
        f"{build.mode} index build {build.index_id}: {build.new_fingerprints} fingerprints matched "
        f"({build.fingerprints} indexed), {build.candidate_pairs} candidate pairs, {build.edges} copies, "
        f"{build.clustered_tracks} tracks in duplicate clusters"
    )
    return 0


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = subparsers.add_parser("dedup", parents=[common], help="update the near-duplicate clusters (--full: rebuild)")
    p.add_argument("--full", action="store_true", help="rebuild from every fingerprint instead of matching new ones")
    p.set_defaults(func=cmd_dedup)
