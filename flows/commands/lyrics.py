"""`songmill lyrics add FILE`: load canonical lyrics into the corpus lyrics database."""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    lyrics = subparsers.add_parser("lyrics", help="the canonical lyrics database")
    sub = lyrics.add_subparsers(dest="lyrics_command", required=True)

    p = sub.add_parser(
        "add",
        parents=[common],
        help="add or update lyrics from JSONL / CSV / Parquet (lyric_id, title, artist, language, lyrics)",
    )
    p.add_argument("files", nargs="+", metavar="FILE")
    p.set_defaults(func=cmd_add)

    p = sub.add_parser("info", parents=[common], help="how many lyrics, and the LSH index state")
    p.set_defaults(func=cmd_info)


def _database(args: argparse.Namespace, create: bool):
    from songmill.flows import app
    from songmill.flows.commands import corpus_root, settings

    return app.lyrics_database(corpus_root(args), settings(args), create)


def cmd_add(args: argparse.Namespace) -> int:
    from songmill.annotate.lyrics_db import LyricsFileError, read_lyrics_file

    db = _database(args, create=True)
    status = 0
    for path in args.files:
        try:
            records = read_lyrics_file(path)
        except (LyricsFileError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            status = 1
            continue
        summary = db.add(records, source=path)
        for problem in summary.invalid[:20]:
            print(f"warning: {path}: {problem}", file=sys.stderr)
        if summary.invalid:
            status = 1
        print(
            f"lyrics {path}: {summary.added} added, {summary.updated} updated, "
            f"{summary.unchanged} unchanged, {len(summary.invalid)} invalid -> {db.corpus.root}"
        )
    index = db.index()
    print(
        f"lyrics database: {len(index)} lyrics indexed (LSH threshold {db.params.lsh_threshold}, {db.params.num_perm} permutations)"
    )
    return status


def cmd_info(args: argparse.Namespace) -> int:
    db = _database(args, create=False)
    index = db.index()
    print(
        f"{db.count()} lyrics, {len(index)} in the LSH index {db.index_relpath} (fingerprint {index.fingerprint})"
    )
    return 0
