"""Fit the music stage's beat refiner (songmill.model.beat_refiner) on real productions.

The refiner reads BeatNet's causal activations and the onset evidence both ways in time. Its
training rows are the train half (bench_music_accuracy.split_of: by piece, the same split every
bench reports) of one or more development sets built by build_lmms_devset.py (LMMS, Hydrogen,
OpenMSX: beats and downbeats from each project's own tempo and metre). The test half and every
recorded source (Frets on Fire) stay out, so the bench's figures on them are held out.

    .venv/bin/python benchmarks/devset/train_beat_refiner.py --real /tmp/songmill-lmms \
        --features /tmp/refiner-features.pkl --out model/pretrained

About 10 minutes for 30 epochs on 2 cores (322 rows); the features take 3 minutes and are kept
in --features for the next run.
"""

from __future__ import annotations

import argparse
import json
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

BENCHMARKS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCHMARKS))

FPS = 50  # BeatNet's frame rate


def load_rows(folders: list[Path], split: str) -> list[dict]:
    from bench_music_accuracy import split_of

    rows = []
    for folder in folders:
        for line in (folder / "labels.jsonl").read_text().splitlines():
            row = json.loads(line)
            if row.get("beats") and (split == "all" or split_of(row) == split):
                rows.append(row)
    return rows


def features(rows: list[dict], models: tuple[int, ...], cache: Path | None) -> list[dict]:
    """Per row: each network's (frames, 2) activations and the (frames, 136) positive
    difference, from BeatNet's own feature and network code (cached by path)."""
    from songmill.annotate.base import Track
    from songmill.annotate.music_learned import N_BANDS, BeatNetTracker

    known = pickle.loads(cache.read_bytes()) if cache and cache.is_file() else {}
    tracker = None
    out = []
    for i, row in enumerate(rows):
        if row["path"] not in known:
            tracker = tracker or BeatNetTracker(models)
            y, _ = Track({"track_id": str(i), "uri": row["path"], "duration_s": None}).audio(
                22050, mono=True
            )
            feats = tracker.spectrogram(y)
            known[row["path"]] = {
                "activations": {m: tracker.model_activations(feats, m) for m in models},
                "positive_diff": feats[:, N_BANDS:].astype(np.float16),
            }
        out.append(known[row["path"]])
    if cache and tracker is not None:
        tmp = cache.with_suffix(".tmp")
        tmp.write_bytes(pickle.dumps(known, protocol=4))
        tmp.replace(cache)
    return out


def targets(row: dict, n: int) -> np.ndarray:
    """(n, 3) soft targets in BeatNet's layout (beat but not downbeat, downbeat, none): 1 at the
    labelled frame, 0.5 at its neighbours (a label is good to a frame or so)."""
    t = np.zeros((n, 3), np.float32)
    for column, key in ((0, "beats"), (1, "downbeats")):
        for seconds in row.get(key) or []:
            frame = int(round(seconds * FPS))
            for offset, weight in ((0, 1.0), (-1, 0.5), (1, 0.5)):
                if 0 <= frame + offset < n:
                    t[frame + offset, column] = max(t[frame + offset, column], weight)
    t[:, 0] = np.maximum(t[:, 0] - t[:, 1], 0.0)
    t[:, 2] = np.clip(1.0 - t[:, 0] - t[:, 1], 0.0, 1.0)
    return t


def fit(
    rows: list[dict],
    feats: list[dict],
    config,
    epochs: int,
    seed: int,
    crop: int = 1000,
    batch: int = 16,
    lr: float = 2e-3,
):
    """The refiner fitted by soft-target cross-entropy on random `crop`-frame windows."""
    import torch
    from songmill.model.beat_refiner import BeatRefiner

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = BeatRefiner(config)
    data = []
    for row, f in zip(rows, feats, strict=True):
        x = model.inputs(f["activations"], f["positive_diff"])
        data.append((x, targets(row, x.shape[0])))
    stacked = np.concatenate([x for x, _ in data])
    model.mean.copy_(torch.from_numpy(stacked.mean(axis=0)))
    model.std.copy_(torch.from_numpy(stacked.std(axis=0) + 1e-3))
    optimiser = torch.optim.Adam(model.parameters(), lr)
    model.train()
    for epoch in range(epochs):
        total = 0.0
        order = rng.permutation(len(data))
        for start in range(0, len(order), batch):
            xs, ys = [], []
            for j in order[start : start + batch]:
                x, y = data[j]
                s = int(rng.integers(0, max(1, x.shape[0] - crop)))
                x, y = x[s : s + crop], y[s : s + crop]
                pad = crop - x.shape[0]  # short rows: padded frames carry no target
                xs.append(np.pad(x, ((0, pad), (0, 0))))
                ys.append(np.pad(y, ((0, pad), (0, 0))))
            y = torch.from_numpy(np.stack(ys))
            log_p = torch.log_softmax(model(torch.from_numpy(np.stack(xs))), dim=-1)
            weight = y.sum(dim=-1)
            loss = -((y * log_p).sum(dim=-1) * weight).sum() / weight.sum()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss.detach())
        print(f"epoch {epoch + 1}/{epochs}: loss {total:.3f}", flush=True)
    return model.eval(), total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--real", type=Path, nargs="+", required=True, help="devset folders")
    parser.add_argument("--out", type=Path, default=Path("model/pretrained"))
    parser.add_argument("--features", type=Path, help="keep / reuse BeatNet's outputs here")
    parser.add_argument("--split", default="train", choices=("train", "all"))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--dropout", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args(argv)

    import torch
    from songmill.model.beat_refiner import NAME, BeatRefinerConfig
    from songmill.model.weights import save_module

    torch.set_num_threads(args.threads)
    rows = load_rows(args.real, args.split)
    if not rows:
        print("no labelled rows in " + ", ".join(map(str, args.real)), file=sys.stderr)
        return 2
    config = BeatRefinerConfig(hidden=args.hidden, dropout=args.dropout)
    t0 = time.time()
    feats = features(rows, config.beatnet_models, args.features)
    print(f"{len(rows)} rows, BeatNet features in {time.time() - t0:.0f} s", flush=True)
    model, loss = fit(rows, feats, config, args.epochs, args.seed)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    config.provenance = {
        "script": "benchmarks/devset/train_beat_refiner.py",
        "commit": commit,
        "sources": sorted({row["subset"] for row in rows}),
        "split": args.split,
        "rows": len(rows),
        "epochs": args.epochs,
        "seed": args.seed,
        "final_loss": round(loss, 3),
    }
    path = save_module(model, config.to_dict(), args.out, NAME)
    print(f"wrote {path} ({sum(p.numel() for p in model.parameters())} parameters)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
