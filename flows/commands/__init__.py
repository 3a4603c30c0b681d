"""The CLI's command groups beyond the core ones in flows/cli.py, one module per group, each with
`register(subparsers, common)`; flows/cli.py imports a module only when its command is named.

What every command reads from its arguments (the corpus root, the stage settings) is here, so that
a command module never imports the CLI back.
"""

from __future__ import annotations

import argparse
from typing import Any

from songmill.flows import app


def corpus_root(args: argparse.Namespace) -> str:
    """--corpus, else $SONGMILL_CORPUS, else ./corpus."""
    return app.resolve_corpus_root(args.corpus)


def settings(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Stage settings from --config (default <corpus>/songmill.toml) and --set overrides."""
    return app.settings_for(args.corpus, args.config, args.overrides)


def add_window_arguments(p: argparse.ArgumentParser) -> None:
    """--window / --align, on `songmill manifest` and on the exports."""
    p.add_argument(
        "--window",
        type=float,
        default=None,
        metavar="SECONDS",
        help="one row per window of about SECONDS (at most 240) cut on musical boundaries, each with its own lyric slice",
    )
    p.add_argument(
        "--align",
        choices=("downbeat", "section"),
        default="downbeat",
        help="with --window: windows start on a downbeat or a section start",
    )
