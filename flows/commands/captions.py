"""`songmill captions tags`: the distribution of the normalised caption tags, with a warning
when one tag covers most tracks (a caption model collapsing to one genre)."""

from __future__ import annotations

import argparse
import sys


def _cmd_tags(args: argparse.Namespace) -> int:
    from songmill.data_schema.store import CorpusError
    from songmill.flows import app
    from songmill.flows.commands import corpus_root

    try:
        n_rows, counts, warning = app.caption_tags(corpus_root(args), args.column)
    except CorpusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.column} over {n_rows} captioned tracks ({len(counts)} distinct):")
    for tag, n in counts.most_common(args.top):
        print(f"  {tag:<24} {n:>7}  {100 * n / max(n_rows, 1):5.1f} %")
    if warning:
        print(f"warning: {warning}")
    return 0


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    captions = subparsers.add_parser("captions", help="caption tag statistics", parents=[common])
    sub = captions.add_subparsers(dest="captions_command", required=True)
    tags = sub.add_parser(
        "tags",
        help="distribution of the normalised genre / mood / instrument tags",
        parents=[common],
    )
    tags.add_argument("--column", choices=["genres", "moods", "instruments"], default="genres")
    tags.add_argument("--top", type=int, default=25)
    tags.set_defaults(func=_cmd_tags)
