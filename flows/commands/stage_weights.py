"""`songmill models list|fetch`: the weights each stage needs, where songmill looks, and fetching
(annotate/weights.py is the registry, annotate/weights_fetch.py looks and fetches; this module
parses and prints)."""

from __future__ import annotations

import argparse
import json
import sys

from songmill.annotate.weights import REGISTRY, locate
from songmill.annotate.weights_fetch import FetchError, fetch, list_models, selected_value
from songmill.flows.commands import settings
from songmill.flows.hints import runnable, venv_command


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _cmd_list(args: argparse.Namespace) -> int:
    entries = list_models(settings(args))
    if args.json:
        print(json.dumps(entries, indent=2))
        return 0
    width = max(len(e["name"]) for e in entries)
    for e in entries:
        state = f"present  {_human(e['size_bytes']):>9}  {e['path']}" if e["present"] else "missing"
        unused = "" if e["in_use"] else "  (not selected by the current settings)"
        licence = f"  [{e['licence']}]" if e["licence"] else ""
        print(f"{e['name']:<{width}}  {e['setting']:<24} {state}{licence}{unused}")
        if not e["present"]:
            print(
                f"{'':<{width}}  looked in: {'; '.join(e['looked']) or '(set ' + e['setting'] + ')'}"
            )
    from songmill.annotate.music_learned import beat_backends

    print("\nmusic beat backends (learned; the DSP path needs none):")
    for b in beat_backends(str((settings(args).get("music") or {}).get("beat_this_weights", ""))):
        print(
            f"  {b['name']:<15} {'present' if b['present'] else 'missing':<8} {b['licence']:<44} {b['setting']}"
        )
    missing = [e["name"] for e in entries if not e["present"]]
    if missing:
        songmill = venv_command("songmill")
        print(
            f"\n{len(missing)} missing; `{songmill} models fetch NAME` or `{songmill} models fetch --all` downloads them"
        )
    return 0


def _cmd_fetch(args: argparse.Namespace) -> int:
    conf = settings(args)
    if args.all:
        names = [n for n, s in REGISTRY.items() if s.source != "path"]
    elif args.names:
        unknown = [n for n in args.names if n not in REGISTRY]
        if unknown:
            print(
                f"error: unknown weights {', '.join(map(repr, unknown))}; known: {', '.join(REGISTRY)}",
                file=sys.stderr,
            )
            return 2
        names = list(args.names)
    else:
        print(
            f"error: name the weights to fetch, or --all (see `{venv_command()} models list`)",
            file=sys.stderr,
        )
        return 2
    failed = 0
    for name in names:
        spec = REGISTRY[name]
        where = locate(spec, selected_value(conf, spec))
        if where.present:
            print(f"{name}: present at {where.path}")
            continue
        try:
            path = fetch(spec, conf)
        except FetchError as exc:
            print(
                runnable(f"error: {exc}"), file=sys.stderr
            )  # FetchError's text says `songmill models fetch`
            failed += 1
            continue
        print(f"{name}: fetched -> {path}")
    return 1 if failed else 0


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    models = subparsers.add_parser(
        "models", help="weights each stage needs: where looked, present, fetch", parents=[common]
    )
    sub = models.add_subparsers(dest="models_command", required=True)
    show = sub.add_parser(
        "list",
        help="every stage's weights, where songmill looks, present or missing",
        parents=[common],
    )
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(func=_cmd_list)
    get = sub.add_parser("fetch", help="download weights (needs network)", parents=[common])
    get.add_argument("names", nargs="*", metavar="NAME", help=f"any of: {', '.join(REGISTRY)}")
    get.add_argument("--all", action="store_true", help="every entry that has a public download")
    get.set_defaults(func=_cmd_fetch)
