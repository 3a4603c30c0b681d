"""`songmill model ...` sub-commands."""

from __future__ import annotations

import argparse
import json
import shlex

from songmill.model.config import PRESET_NAMES


def _info(args: argparse.Namespace) -> int:
    from songmill.model.info import param_counts

    print(json.dumps(param_counts(args.preset), indent=2))
    return 0


def _import_acestep(args: argparse.Namespace) -> int:
    from songmill.model.acestep import import_release

    written = import_release(args.src, args.out)
    for part, directory in written.items():
        print(f"{part}: {directory}")
    if "dit" in written:
        from songmill.flows.hints import venv_command

        songmill, dit = venv_command("songmill"), shlex.quote(written["dit"])
        print(
            f'next: {songmill} generate --checkpoint {dit} --prompt "funk, 104 bpm" --duration 30 --out song.wav\n'
            f"  or a LoRA: {songmill} train dit --manifest train.parquet --lora-rank 16 --base-checkpoint {dit} --run-dir runs/lora"
        )
    return 0


def _export_acestep(args: argparse.Namespace) -> int:
    from songmill.model.acestep import export_release

    result = export_release(args.checkpoint, args.out, dcae=args.dcae, vocoder=args.vocoder)
    for part, directory in result["written"].items():
        print(f"{part}: {directory}")
    for note in result["notes"]:
        print(f"note: {note}")
    return 0


def register(subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    model = subparsers.add_parser("model", help="generator model utilities", parents=[common])
    model_sub = model.add_subparsers(dest="model_command", required=True)
    info = model_sub.add_parser(
        "info", help="parameter count of each model part, as JSON", parents=[common]
    )
    info.add_argument("--preset", choices=PRESET_NAMES, default="base")
    info.set_defaults(func=_info)
    imp = model_sub.add_parser(
        "import-acestep",
        parents=[common],
        help="convert an ACE-Step v1 checkpoint directory (ace_step_transformer/, music_dcae_f8c8/, "
        "music_vocoder/, umt5-base/; any subset) into songmill checkpoints",
    )
    imp.add_argument("src", help="the ACE-Step v1 download (safetensors only; pickles are refused)")
    imp.add_argument(
        "--out", required=True, help="directory for dit/, dcae/, vocoder/, text_encoder/"
    )
    imp.set_defaults(func=_import_acestep)
    exp = model_sub.add_parser(
        "export-acestep",
        parents=[common],
        help="write a songmill DiT checkpoint (or LoRA run) in ACE-Step v1's release layout",
    )
    exp.add_argument(
        "checkpoint", help="a run, checkpoints dir or checkpoint of `songmill train dit`"
    )
    exp.add_argument(
        "--out", required=True, help="directory for ace_step_transformer/ (and lora/, ...)"
    )
    exp.add_argument(
        "--dcae", default=None, help="DCAE to export (default: the one the checkpoint names)"
    )
    exp.add_argument(
        "--vocoder", default=None, help="ADaMoS vocoder dir to export (default: the checkpoint's)"
    )
    exp.set_defaults(func=_export_acestep)
