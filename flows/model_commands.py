"""`songmill model ...` sub-commands."""

from __future__ import annotations

import argparse
import json

from songmill.model.config import PRESET_NAMES


def _info(args: argparse.Namespace) -> int:
    from songmill.model.info import param_counts

    print(json.dumps(param_counts(args.preset), indent=2))
    return 0


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    model = subparsers.add_parser("model", help="generator model utilities", parents=[common])
    model_sub = model.add_subparsers(dest="model_command", required=True)
    info = model_sub.add_parser(
        "info", help="parameter count of each model part, as JSON", parents=[common]
    )
    info.add_argument("--preset", choices=PRESET_NAMES, default="base")
    info.set_defaults(func=_info)
