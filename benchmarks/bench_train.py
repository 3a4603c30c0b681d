"""DiT training throughput and peak memory: cached features against computing them every step.

    .venv/bin/python benchmarks/bench_train.py --preset small --crop-s 10 --batch 2 --steps 4

Two ways to feed the same DiT training step (flow-matching + REPA loss, backward, AdamW):
  cached  - songmill: read each track's features shard (DCAE latent, text states, MERT / mHuBERT
            targets) and crop it; no frozen model is loaded.
  compute - ACE-Step's trainer: decode the audio crop, mel -> DCAE encoder, text encoder on the
            caption, MERT-v1-330M (24 kHz) and mHuBERT-147 (16 kHz) forwards, every step.
Each mode runs in its own process (so peak memory is its own): samples/s and peak memory (CUDA
max allocated on a GPU, peak RSS on CPU) and the ratios cached / compute. `--lora-rank R` trains
LoRA adapters instead of the full DiT (the case ACE-Step users run out of memory with).

No pretrained weights here: the frozen models are randomly initialised at their real sizes
(MERT-v1-330M: HuBERT-large shape, 1024 x 24 layers; mHuBERT-147: HuBERT-base shape; umT5-base
encoder for the small / base presets), which costs the same compute and memory as the real ones.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from songmill.annotate.base import Track  # noqa: E402

MERT_330M = dict(
    hidden_size=1024,
    num_hidden_layers=24,
    num_attention_heads=16,
    intermediate_size=4096,
    conv_dim=(512,) * 7,
    feat_extract_norm="layer",
    do_stable_layer_norm=True,
)
MHUBERT_147 = dict(
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    conv_dim=(512,) * 7,
)


def prepare(folder: str, preset_name: str, tracks: int, seconds: float) -> dict[str, str]:
    """Audio, frozen models (random, real sizes) and the features cache, once for both modes."""
    import torch
    from songmill.model.config import preset
    from songmill.model.dcae import MusicDCAE
    from songmill.model.weights import save_module
    from songmill.train.prepare import cache_features, synthetic_manifest
    from transformers import HubertConfig, HubertModel, Wav2Vec2FeatureExtractor

    torch.manual_seed(0)
    paths = {
        "mert": os.path.join(folder, "mert"),
        "mhubert": os.path.join(folder, "mhubert"),
        "dcae": os.path.join(folder, "dcae"),
    }
    HubertModel(HubertConfig(**MERT_330M)).save_pretrained(paths["mert"])
    Wav2Vec2FeatureExtractor(sampling_rate=24000, do_normalize=True).save_pretrained(paths["mert"])
    HubertModel(HubertConfig(**MHUBERT_147)).save_pretrained(paths["mhubert"])
    Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=False).save_pretrained(
        paths["mhubert"]
    )
    dcae_cfg = preset(preset_name).dcae
    save_module(MusicDCAE(dcae_cfg), dcae_cfg.to_dict(), paths["dcae"], "dcae")
    paths["manifest"] = synthetic_manifest(
        os.path.join(folder, "audio"), n_tracks=tracks, duration_s=seconds
    )
    paths["features"] = cache_features(
        paths["manifest"],
        os.path.join(folder, "corpus"),
        os.path.join(folder, "features.parquet"),
        **features_settings(paths, preset_name),
    )
    return paths


def features_settings(paths: dict[str, str], preset_name: str) -> dict[str, str]:
    # tiny: the tiny random text encoder; small / base: a umT5-base-sized random encoder
    text = "tiny-random" if preset_name == "tiny" else "bench-umt5-base"
    return dict(
        dcae_checkpoint=paths["dcae"],
        text_encoder=text,
        mert=paths["mert"],
        mhubert=paths["mhubert"],
        speaker="none",
        ssl_chunk_s=30.0,
    )


def _install_bench_text_encoder() -> None:
    """`bench-umt5-base`: a randomly initialised encoder with umT5-base's shape."""
    import songmill.annotate.features as features
    from songmill.model.config import TextEncoderConfig
    from songmill.model.encoders import TextEncoder

    original = features.build_text_encoder

    def build(spec: str, device: str = "cpu"):
        if spec == "bench-umt5-base":
            cfg = TextEncoderConfig(
                kind="tiny-random",
                path="",
                d_model=768,
                max_length=256,
                vocab_size=256384,
                num_layers=12,
                num_heads=12,
                d_kv=64,
                d_ff=2048,
            )
            return TextEncoder.tiny_random(cfg).to(device)
        return original(spec, device)

    features.build_text_encoder = build
    features._local_pretrained_dir = lambda path, *a: path  # the bench encoder needs no files


def worker(args: argparse.Namespace) -> dict[str, float]:
    import torch
    from songmill.annotate.features import FeatureExtractors, FeaturesConfig
    from songmill.model.config import LATENT_FPS
    from songmill.train.config import TrainConfig
    from songmill.train.data import (
        BatchStream,
        BucketBatchOrder,
        SampleKey,
        collate_features,
        load_crop,
        sample_rng,
    )
    from songmill.train.prepare import track_inputs
    from songmill.train.tasks import DiTTask

    _install_bench_text_encoder()
    with open(args.paths) as f:
        paths = json.load(f)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = TrainConfig(
        kind="dit",
        preset=args.preset,
        batch_size=args.batch,
        max_crop_s=args.crop_s,
        progress=False,
        lora_rank=args.lora_rank,
        precision="auto",
    )
    task = DiTTask(cfg, paths["features"])
    model = task.model
    if args.lora_rank:
        from songmill.train.lora import add_lora

        model = add_lora(model, args.lora_rank, cfg.lora_alpha, cfg.lora_targets)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    order = BucketBatchOrder(task.dataset.lengths(), args.batch, cfg.bucket_s, 0)

    if args.worker == "cached":
        stream = BatchStream(task.dataset, order, task.collate)
        next_batch = lambda: next(stream)  # noqa: E731
    else:
        extractors = FeatureExtractors.from_config(
            FeaturesConfig(**features_settings(paths, args.preset), device=str(device))
        )
        import pyarrow.parquet as pq

        # the whole manifest rows: the features stage's inputs (music, captions...) ride on them
        full_rows = {r["track_id"]: r for r in pq.read_table(paths["features"]).to_pylist()}
        rows = task.rows
        epoch_batches = [b for e in range(1000) for b in order.epoch_batches(e)]

        def next_batch():
            keys: list[SampleKey] = epoch_batches.pop(0)
            items = []
            for key in keys:
                record = rows[key.index]
                row = full_rows[record.track_id]
                wav = load_crop(record, cfg.max_crop_s, sample_rng(key))  # (2, samples) at 44.1 kHz
                track = _CropTrack(row, track_inputs(row), wav)
                tensors, meta = extractors.track_features(track)
                style = "tags"
                frames = int(meta["latent_frames"])
                items.append(
                    {
                        "track_id": row["track_id"],
                        "latent": tensors["latent"].float(),
                        "caption": meta["captions"][style],
                        "text": tensors[f"text.{style}"].float(),
                        "lyrics": tensors["lyrics"].long(),
                        "speaker": torch.zeros(512),
                        "repa": {
                            n: tensors[f"repa.{n}"].float()[
                                : max(1, round(frames / LATENT_FPS * fps))
                            ]
                            for n, fps in meta["repa_fps"].items()
                        },
                    }
                )
            return collate_features(items)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        batch = next_batch()
        use_bf16 = device.type == "cuda"
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss, _ = task.loss(model, batch, generator, device)
        loss.backward()
        optimizer.step()

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = _peak_rss_mib()
    return {
        "samples_per_s": args.steps * args.batch / elapsed,
        "peak_mib": peak,
        "device": device.type,
        "trainable_m": sum(p.numel() for p in params) / 1e6,
    }


def _peak_rss_mib() -> float:
    """This process's peak resident memory. VmHWM, not ru_maxrss: Linux carries ru_maxrss over
    exec, so a worker would report its parent's peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _CropTrack(Track):
    """A Track whose audio is an already-decoded 44.1 kHz crop (what a data-loader worker holds)."""

    def __init__(self, row, inputs, stereo_crop):
        super().__init__(row, inputs)
        self._native = (stereo_crop.T.copy(), 44100)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="small", choices=("tiny", "small", "base"))
    parser.add_argument("--crop-s", type=float, default=10.0)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--tracks", type=int, default=4)
    parser.add_argument("--lora-rank", type=int, default=0)
    parser.add_argument("--worker", choices=("cached", "compute"), help=argparse.SUPPRESS)
    parser.add_argument("--paths", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return

    with tempfile.TemporaryDirectory(prefix="bench-train-") as folder:
        started = time.perf_counter()
        _install_bench_text_encoder()
        paths = prepare(folder, args.preset, args.tracks, args.crop_s)
        paths_file = os.path.join(folder, "paths.json")
        with open(paths_file, "w") as f:
            json.dump(paths, f)
        print(
            f"prepared audio, frozen models and features cache in {time.perf_counter() - started:.0f} s",
            flush=True,
        )
        results = {}
        for mode in ("cached", "compute"):
            cmd = [
                sys.executable,
                os.path.abspath(__file__),
                "--worker",
                mode,
                "--paths",
                paths_file,
                "--preset",
                args.preset,
                "--crop-s",
                str(args.crop_s),
                "--batch",
                str(args.batch),
                "--steps",
                str(args.steps),
                "--warmup",
                str(args.warmup),
                "--lora-rank",
                str(args.lora_rank),
            ]
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                raise SystemExit(
                    f"{mode} worker failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
                )
            results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    cached, compute = results["cached"], results["compute"]
    mode = f"LoRA r={args.lora_rank}" if args.lora_rank else "full fine-tune"
    print(
        f"\nDiT preset {args.preset} ({mode}, {cached['trainable_m']:.1f} M trainable), batch {args.batch} x "
        f"{args.crop_s:g} s crops, {args.steps} timed steps on {cached['device']}"
    )
    print(f"{'':10s}{'samples/s':>12s}{'peak MiB':>12s}")
    for name, r in results.items():
        print(f"{name:10s}{r['samples_per_s']:12.3f}{r['peak_mib']:12.0f}")
    speedup = cached["samples_per_s"] / compute["samples_per_s"]
    saving = 1.0 - cached["peak_mib"] / compute["peak_mib"]
    print(
        f"cached / compute: {speedup:.2f}x samples/s (target >= 3x), {100 * saving:.0f} % less peak memory (target >= 50 %)"
    )
    print(
        json.dumps(
            {
                "preset": args.preset,
                "lora_rank": args.lora_rank,
                "speedup": speedup,
                "memory_saving": saving,
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    main()
