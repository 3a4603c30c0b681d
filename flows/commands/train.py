"""`songmill train ...` and `songmill generate ...`.

    songmill train dcae --manifest m.parquet --preset tiny --run-dir runs/dcae
    songmill train dit  --manifest m_features.parquet --run-dir runs/dit --max-steps 20000
    songmill train dit  --manifest m_features.parquet --resume runs/dit
    songmill train dit  --manifest m.parquet --lora-rank 16 --base-checkpoint runs/dit --run-dir runs/lora
    songmill train merge-lora --checkpoint runs/lora --out exported/
    songmill train tokenizer --out lyrics_bpe.json
    songmill generate --checkpoint runs/dit --prompt "funk, 104 bpm" --duration 30 --out song.wav

Settings: defaults < the resumed checkpoint's settings < the [train] table of the settings TOML
(--config FILE, default <corpus>/songmill.toml) with `--set train.key=value` overrides < the
explicit flags below. Multi-GPU: `torchrun --nproc-per-node 8 -m songmill.flows.cli train dit ...`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

FLAG_SETTINGS = {  # argparse dest -> TrainConfig field
    "preset": "preset",
    "max_steps": "max_steps",
    "batch_size": "batch_size",
    "lr": "lr",
    "lora_rank": "lora_rank",
    "lora_alpha": "lora_alpha",
    "lora_targets": "lora_targets",
    "base_checkpoint": "base_checkpoint",
    "dcae_checkpoint": "dcae_checkpoint",
    "phase": "dcae_phase",
    "init_from": "init_from",
    "device": "device",
    "num_workers": "num_workers",
    "seed": "seed",
}


def register(
    subparsers: argparse._SubParsersAction, common: argparse.ArgumentParser | None = None
) -> None:
    parents = [common] if common is not None else []
    # --corpus (in `common`) sits on the leaf parsers only: a parent's value would be overwritten
    # by the leaf's default.
    train = subparsers.add_parser("train", help="train the DCAE or the DiT from a manifest")
    kinds = train.add_subparsers(dest="train_command", required=True)
    for kind in ("dcae", "dit"):
        p = kinds.add_parser(kind, parents=parents, help=f"train the {kind.upper()}")
        add_train_arguments(p)
        p.set_defaults(func=run_train, kind=kind)
    tok = kinds.add_parser(
        "tokenizer", parents=parents, help="train the lyric BPE tokenizer on the corpus lyrics"
    )
    tok.add_argument("--out", required=True, help="tokenizer.json to write")
    tok.add_argument("--vocab-size", type=int, default=4096)
    tok.set_defaults(func=run_tokenizer)
    merge = kinds.add_parser(
        "merge-lora", parents=parents, help="fold a LoRA run's adapters into its base DiT"
    )
    merge.add_argument("--checkpoint", required=True, help="LoRA run or checkpoint dir")
    merge.add_argument("--out", required=True, help="directory for the merged DiT checkpoint")
    merge.set_defaults(func=run_merge_lora)

    gen = subparsers.add_parser(
        "generate", parents=parents, help="generate audio from a DiT checkpoint"
    )
    gen.add_argument("--checkpoint", required=True, help="DiT run dir or checkpoint dir")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--lyrics", help="text file with the lyrics (none: instrumental)")
    gen.add_argument("--duration", type=float, required=True, help="seconds")
    gen.add_argument("--out", required=True, help="output .wav")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument(
        "--sampler",
        choices=("acestep", "euler", "heun"),
        default="acestep",
        help="acestep: ACE-Step v1's Euler 60 steps + APG 15, guidance interval 0.5, omega 10 "
        "(default); euler / heun: 27 steps, plain CFG 7",
    )
    gen.add_argument("--steps", type=int, help="integration steps (default: the sampler's)")
    gen.add_argument("--guidance", type=float, help="guidance scale (default: the sampler's)")
    gen.add_argument(
        "--guidance-type", choices=("apg", "cfg"), help="APG or plain classifier-free guidance"
    )
    gen.add_argument(
        "--guidance-interval", type=float, help="centred fraction of the steps that get guidance"
    )
    gen.add_argument("--omega", type=float, help="ACE-Step's Euler step rescale (0: none)")
    gen.add_argument("--dcae", help="DCAE checkpoint (default: the one the DiT was trained with)")
    gen.add_argument("--vocoder", help="vocoder dir (default: Griffin-Lim)")
    gen.add_argument("--device", default="auto")
    gen.set_defaults(func=run_generate)


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--manifest", required=True, help="Parquet from `songmill manifest --out`")
    p.add_argument("--preset", choices=("tiny", "small", "base"))
    p.add_argument("--max-steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--run-dir", help="where checkpoints, samples and TensorBoard logs go")
    p.add_argument("--resume", help="run or checkpoint dir to continue from")
    p.add_argument("--force", action="store_true", help="resume even though the settings changed")
    p.add_argument("--lora-rank", type=int, help="train LoRA adapters of this rank (DiT)")
    p.add_argument("--lora-alpha", type=float)
    p.add_argument("--lora-targets", help="comma-separated module names to adapt")
    p.add_argument("--base-checkpoint", help="DiT checkpoint LoRA adapts")
    p.add_argument(
        "--dcae-checkpoint",
        help="DCAE checkpoint (DiT): decodes validation audio, and computes the "
        "features first when the manifest has none",
    )
    p.add_argument(
        "--phase", type=int, choices=(1, 2), help="DCAE phase: 1 reconstruction, 2 adversarial"
    )
    p.add_argument(
        "--init-from",
        help="weights to fine-tune: a DCAE / DiT run, checkpoint or imported release dir "
        "(`songmill model import-acestep`); DCAE phase 2 starts from the phase-1 run",
    )
    p.add_argument("--device", help="auto | cpu | cuda")
    p.add_argument("--num-workers", type=int)


def run_train(args: argparse.Namespace) -> int:
    from songmill.flows import app
    from songmill.train.loop import train

    flags = {
        field: getattr(args, dest)
        for dest, field in FLAG_SETTINGS.items()
        if getattr(args, dest, None) is not None
    }
    # --corpus, --config and --set come from the common parser, when there is one
    settings_from = (
        getattr(args, "config", None),
        getattr(args, "corpus", None),
        getattr(args, "overrides", []),
    )
    config = app.train_config(args.kind, args.resume, *settings_from, flags)
    if config.kind == "dcae" and config.dcae_phase == 2 and not (config.init_from or args.resume):
        print(
            "error: DCAE phase 2 starts from a phase-1 DCAE: pass --init-from RUN_DIR",
            file=sys.stderr,
        )
        return 2
    manifest = args.manifest
    if config.kind == "dit":
        manifest = app.dit_manifest(manifest, config.dcae_checkpoint, *settings_from)
    run_dir = app.train_run_dir(args.kind, args.run_dir, args.resume)
    result = train(config, manifest, run_dir, resume=args.resume, force=args.force)
    summary = {
        "run_dir": result.run_dir,
        "step": result.step,
        "checkpoint": result.checkpoint,
        "final_loss": result.losses[-1] if result.losses else None,
        "stopped_by_signal": result.stopped_by_signal,
    }
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(summary))
    return 0


def run_tokenizer(args: argparse.Namespace) -> int:
    from songmill.flows import app

    texts = app.train_tokenizer(getattr(args, "corpus", None), args.out, args.vocab_size)
    if not texts:
        print("no lyrics in the corpus yet (lyrics catalog or transcripts)", file=sys.stderr)
        return 1
    print(json.dumps({"out": args.out, "texts": texts}))
    return 0


def run_merge_lora(args: argparse.Namespace) -> int:
    from songmill.train.export import merge_lora_checkpoint

    print(json.dumps({"out": merge_lora_checkpoint(args.checkpoint, args.out)}))
    return 0


def run_generate(args: argparse.Namespace) -> int:
    from songmill.train.export import generate_from_checkpoint

    lyrics = None
    if args.lyrics:
        with open(args.lyrics, encoding="utf-8") as f:
            lyrics = f.read()
    path = generate_from_checkpoint(
        args.checkpoint,
        args.prompt,
        lyrics,
        args.duration,
        args.out,
        seed=args.seed,
        steps=args.steps,
        guidance=args.guidance,
        sampler=args.sampler,
        dcae=args.dcae,
        vocoder=args.vocoder,
        device=args.device,
        guidance_type=args.guidance_type,
        guidance_interval=args.guidance_interval,
        omega=args.omega,
    )
    print(json.dumps({"out": path, "duration_s": args.duration}))
    return 0
