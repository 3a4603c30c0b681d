"""`songmill export acestep15|acestep-v1`: a manifest as the datasets other trainers read
(train/export_datasets.py). Windows (`--window`) are cut from the corpus first, as
`songmill manifest --window` cuts them."""

from __future__ import annotations

import argparse
import os
import tempfile


def run_export(args: argparse.Namespace) -> int:
    from songmill.flows import app
    from songmill.train.export_datasets import ExportOptions, export_dataset

    options = ExportOptions(
        args.kind,
        audio=args.audio,
        custom_tag=args.custom_tag,
        caption_style=args.caption_style,
        conflicts=args.conflicts,
        name=args.name,
        hf_dataset=getattr(args, "hf_dataset", None),
        repeat=getattr(args, "repeat", 1),
        split=args.split,
        min_confidence=args.min_confidence,
    )
    window = app.window_options(args.window, args.align)
    if window is None:
        print(export_dataset(args.manifest, args.out, options).summary())
        return 0
    with tempfile.TemporaryDirectory(prefix="songmill-windows-") as tmp:
        windowed = os.path.join(tmp, "windows.parquet")
        rows = app.window_manifest(args.corpus, args.manifest, windowed, window)
        print(f"windows: {rows} cut from {args.manifest}")
        print(export_dataset(windowed, args.out, options).summary())
    return 0


def register(
    subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser | None = None
) -> None:
    from songmill.flows.commands import add_window_arguments
    from songmill.train.export_datasets import AUDIO_MODES, CAPTION_STYLES, CONFLICT_MODES

    parents = [common] if common is not None else []
    export = subparsers.add_parser(
        "export", help="a manifest as ACE-Step 1.5's or ACE-Step v1's training dataset"
    )
    kinds = export.add_subparsers(dest="export_kind", required=True)
    for kind, text in (
        ("acestep15", "ACE-Step 1.5 dataset JSON + .caption.txt / .lyrics.txt / .json sidecars"),
        (
            "acestep-v1",
            "the folder ACE-Step v1's convert2hf_dataset.py reads (X.mp3, X_prompt.txt, X_lyrics.txt)",
        ),
    ):
        p = kinds.add_parser(kind, parents=parents, help=text)
        p.add_argument(
            "--manifest", required=True, help="manifest Parquet (`songmill manifest --out FILE`)"
        )
        p.add_argument(
            "--out",
            required=True,
            help="new or empty directory (or an earlier export of the same kind)",
        )
        p.add_argument(
            "--audio",
            choices=AUDIO_MODES,
            default="copy",
            help="copy (default), link (symlink) or none (point at the source files)",
        )
        p.add_argument(
            "--custom-tag",
            default="",
            help="trigger word: ACE-Step 1.5's custom_tag; v1: the first tag",
        )
        p.add_argument(
            "--caption-style",
            choices=CAPTION_STYLES,
            default="description",
            help="the captions column used (the others in turn where it is empty)",
        )
        p.add_argument(
            "--conflicts",
            choices=CONFLICT_MODES,
            default="drop",
            help="tracks whose caption contradicts a measurement or whose labels disagree: drop (default), "
            "review (1.5: written with labeled false), keep; all listed in DIR/export.json",
        )
        p.add_argument("--name", default="songmill", help="dataset name (ACE-Step 1.5 metadata)")
        p.add_argument(
            "--min-confidence",
            type=float,
            default=0.5,
            metavar="P",
            help="bpm / key measured with a confidence below P are left blank, not stated (default 0.5)",
        )
        p.add_argument(
            "--split",
            default=None,
            metavar="NAME",
            help="only the rows of this split (a manifest cut with --split)",
        )
        add_window_arguments(p)
        if kind == "acestep-v1":
            p.add_argument(
                "--hf-dataset",
                default=None,
                metavar="NAME",
                help="also save the HF dataset (datasets.save_to_disk) as DIR/NAME",
            )
            p.add_argument(
                "--repeat",
                type=int,
                default=1,
                help="rows per sample in the HF dataset (convert2hf_dataset's --repeat_count)",
            )
        p.set_defaults(func=run_export, kind=kind)
