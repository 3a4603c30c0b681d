"""What slicing the lyrics to each crop costs the DiT's data loading, against the same loader
keeping the whole lyric (lyric_crop=full, the earlier behaviour), in the same run.

    .venv/bin/python benchmarks/bench_lyric_crop.py --tracks 16 --seconds 240 --lines 60

Shards in the features stage's format (random latents at the real frame rate, umT5-sized text
states, MERT / mHuBERT targets, a lyric of `--lines` timed lines); each mode reads `--samples`
crops of `--crop-s` seconds: samples/s, and how many lyric tokens a crop carries (with the
full lyric, a 30 s crop of a 4-minute song carries every line; sliced, only those sung in it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from songmill.model.config import LATENT_FPS  # noqa: E402

WORDS = (
    "sing the night away light my heart again dance slow under falling stars we were young".split()
)


def write_shards(folder: str, tracks: int, seconds: float, lines: int, seed: int) -> list[dict]:
    from songmill.data_schema.shards import shard_bytes
    from songmill.model.lyric_tokens import LyricTokenizer

    rng = np.random.default_rng(seed)
    tokenizer = LyricTokenizer.load("")
    rows = []
    for i in range(tracks):
        frames = int(np.ceil(seconds * LATENT_FPS))
        starts = np.sort(rng.uniform(0, seconds - 3.0, lines))
        timed = [
            {"start": float(s), "end": float(s + 2.5), "text": " ".join(rng.choice(WORDS, 6))}
            for s in starts
        ]
        text = " ".join(line["text"] for line in timed)
        tensors = {
            "latent": torch.from_numpy(
                rng.standard_normal((8, 16, frames), dtype=np.float32)
            ).half(),
            "text.tags": torch.from_numpy(rng.standard_normal((24, 768), dtype=np.float32)).half(),
            "lyrics": torch.tensor(tokenizer.encode_ids(text), dtype=torch.int32),
            "repa.mert": torch.from_numpy(
                rng.standard_normal((int(seconds * 75), 1024), dtype=np.float32)
            ).half(),
            "repa.mhubert": torch.from_numpy(
                rng.standard_normal((int(seconds * 50), 768), dtype=np.float32)
            ).half(),
        }
        meta = {
            "latent_frames": frames,
            "latent_fps": LATENT_FPS,
            "captions": {"tags": "pop"},
            "repa_fps": {"mert": 75.0, "mhubert": 50.0},
            "speaker_dim": 512,
            "lyric_tokenizer_path": "",
            "lyric_lines": timed,
            "lyrics_untimed": False,
        }
        path = os.path.join(folder, f"{i}.safetensors")
        with open(path, "wb") as f:
            f.write(shard_bytes(tensors, meta))
        rows.append({"track_id": str(i), "uri": "", "duration_s": seconds, "features_url": path})
    return rows


def measure(rows: list[dict], mode: str, crop_s: float, samples: int) -> dict:
    from songmill.data_schema.manifest import ManifestRecord
    from songmill.train.data import FeatureDataset, SampleKey

    dataset = FeatureDataset([ManifestRecord(**r) for r in rows], crop_s, 4096, mode)
    dataset[SampleKey(0, 0, 0, 0)]  # warm-up: tokenizer, page cache
    tokens = []
    started = time.perf_counter()
    for slot in range(samples):
        item = dataset[SampleKey(slot % len(rows), 1, slot, 0)]
        tokens.append(len(item["lyrics"]))
    elapsed = time.perf_counter() - started
    return {"samples_per_s": samples / elapsed, "mean_lyric_tokens": float(np.mean(tokens))}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tracks", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=240.0)
    parser.add_argument("--lines", type=int, default=60)
    parser.add_argument("--crop-s", type=float, default=30.0)
    parser.add_argument("--samples", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench-lyric-crop-") as folder:
        rows = write_shards(folder, args.tracks, args.seconds, args.lines, args.seed)
        results = {}
        for _ in range(2):  # alternate, keep the better of two rounds each
            for mode in ("full", "timestamps"):
                r = measure(rows, mode, args.crop_s, args.samples)
                if mode not in results or r["samples_per_s"] > results[mode]["samples_per_s"]:
                    results[mode] = r
    base = results["full"]
    print(
        f"{args.tracks} shards of {args.seconds:g} s, {args.lines} timed lines each, {args.crop_s:g} s crops, {args.samples} samples"
    )
    print(f"{'lyric_crop':12s}{'samples/s':>12s}{'x full':>9s}{'lyric tokens / crop':>22s}")
    for mode, r in results.items():
        print(
            f"{mode:12s}{r['samples_per_s']:12.1f}{r['samples_per_s'] / base['samples_per_s']:9.2f}{r['mean_lyric_tokens']:22.1f}"
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
