"""Fit the `music` stage's key model (annotate/key.py: KEY_MODEL_FEATURES, KEY_MODEL_WEIGHTS).

The model is a conditional logit over the 24 keys: P(key) = softmax(sum_j w_j f_j(key)), where
f_j is the correlation of one of the two chromas (the stage's HPCP and KeyExtractor's, both
computed on the stage's 11025 Hz frames) with one essentia profile, or a chroma's natural
seventh (annotate/key.py: natural_seventh; v6). The weights are fitted by
maximum likelihood with an L2 penalty on the pooled `train` halves of the excerpts with a key
label: the rendered-score development set and its alt_* subsets (build_devset.py), or the real
productions (build_lmms_devset.py: LMMS and OpenMSX, labelled from their own notes). Which
features and which penalty: the best leave-one-piece-out exact score on those train halves (the
test halves play no part in any choice). Printed: per candidate, the leave-one-piece-out train
score, the in-sample train scores and the test-half scores (per set: dev, alt_*, lmms, openmsx),
the v4 rule for reference, the weights of the chosen model, and the Brier score of
its probability as key_confidence.

    .venv/bin/python benchmarks/devset/fit_key_model.py --devset /tmp/songmill-devset
    .venv/bin/python benchmarks/devset/fit_key_model.py --devset /tmp/songmill-lmms   # real productions
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy.optimize import minimize

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_music_accuracy import mirex_key, split_of  # noqa: E402  (benchmarks/ is on sys.path)
from songmill.annotate.audio import decode, to_mono_resampled  # noqa: E402
from songmill.annotate.key import (  # noqa: E402
    KEY_MODEL_FEATURES,
    PITCH_CLASSES,
    PROFILES,
    KeyConfig,
    estimate_tuning,
    hpcp_frames,
    key_feature,
    key_name,
    keyextractor_config,
    model_chroma,
)
from songmill.annotate.tempo import ANALYSIS_SR  # noqa: E402

STAGE = KeyConfig()
FALLBACK = keyextractor_config(STAGE)
SIX = tuple((c, p) for p in ("bgate", "temperley2005", "noland") for c in ("stage", "keyextractor"))
CANDIDATES: dict[str, tuple[tuple[str, str], ...]] = {
    "both chromas, bgate": (("stage", "bgate"), ("keyextractor", "bgate")),
    "both chromas, bgate + temperley2005": tuple(
        (c, p) for p in ("bgate", "temperley2005") for c in ("stage", "keyextractor")
    ),
    "both chromas, bgate + temperley2005 + noland": SIX,
    "both chromas, three profiles, KeyExtractor's natural seventh": KEY_MODEL_FEATURES,
    "both chromas, three profiles, both natural sevenths": (
        *SIX,
        ("keyextractor", "natural_seventh"),
        ("stage", "natural_seventh"),
    ),
    "KeyExtractor's chroma, three profiles": tuple(
        ("keyextractor", p) for p in ("bgate", "temperley2005", "noland")
    ),
    "stage chroma, three profiles": tuple(
        ("stage", p) for p in ("bgate", "temperley2005", "noland")
    ),
}
PENALTIES = (0.01, 0.03, 0.1, 0.3)
REAL_SETS = ("lmms", "hydrogen", "openmsx")
V4_RATIO = 0.81


def features(rows: list[dict]) -> list[dict[tuple[str, str], np.ndarray]]:
    """Per excerpt: (chroma, profile) -> the 24 keys' correlations, as the stage computes them."""
    out = []
    for row in rows:
        samples, sr = decode(row["path"])
        y = np.ascontiguousarray(to_mono_resampled(samples, sr, ANALYSIS_SR), dtype=np.float32)
        tuning = estimate_tuning(y, ANALYSIS_SR)
        reference = (
            tuning
            if tuning and abs(1200 * np.log2(tuning / 440.0)) >= STAGE.min_tuning_cents
            else 440.0
        )
        chromas = {
            name: model_chroma(hpcp_frames(y, ANALYSIS_SR, config, reference).sum(axis=0), config)
            for name, config in (("stage", STAGE), ("keyextractor", FALLBACK))
        }
        out.append(
            {
                (name, feature): key_feature(chroma, feature)
                for name, chroma in chromas.items()
                for feature in (*PROFILES, "natural_seventh")
            }
        )
    return out


def fit(
    feats: list[dict], truths: list[int], names: tuple[tuple[str, str], ...], l2: float
) -> np.ndarray:
    x = np.stack(
        [np.stack([f[n] for n in names], axis=1) for f in feats]
    )  # excerpts x 24 keys x features
    rows = np.arange(x.shape[0])
    truth = np.asarray(truths)

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        z = x @ w
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        total = l2 * float(w @ w) - float(np.log(p[rows, truth] + 1e-12).sum())
        grad = 2 * l2 * w - (x[rows, truth] - np.einsum("nk,nkf->nf", p, x)).sum(axis=0)
        return total, grad

    start = np.full(len(names), 5.0)
    return minimize(loss, start, jac=True, method="L-BFGS-B").x


def predict(f: dict, names: tuple[tuple[str, str], ...], w: np.ndarray) -> tuple[int, float]:
    z = np.stack([f[n] for n in names], axis=1) @ w
    p = np.exp(z - z.max())
    p /= p.sum()
    return int(np.argmax(p)), float(p.max())


def key_index(row: dict) -> int:
    return PITCH_CLASSES.index(row["key_tonic"]) + (12 if row["key_mode"] == "minor" else 0)


def mirex(index: int, row: dict) -> float:
    return mirex_key(*key_name(index), row["key_tonic"], row["key_mode"])


def kind_of(row: dict) -> str:
    """The set an excerpt is reported with: the rendered scores (`dev`), their `alt` subsets, or
    a real-production set (build_lmms_devset.py: `lmms`, `openmsx`)."""
    subset = row["subset"]
    return "alt" if subset.startswith("alt_") else subset if subset in REAL_SETS else "dev"


def summary(values: list[float]) -> str:
    return f"{np.mean(np.equal(values, 1.0)):.2f}/{np.mean(values):.2f}" if values else "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devset", type=Path, required=True)
    args = parser.parse_args(argv)
    rows = [json.loads(line) for line in (args.devset / "labels.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["subset"] != "full" and r.get("key_tonic")]
    feats = features(rows)
    train = [i for i, r in enumerate(rows) if split_of(r) == "train"]
    groups = {
        f"{part}-{kind}": [
            i for i, r in enumerate(rows) if split_of(r) == part and kind_of(r) == kind
        ]
        for part in ("train", "test")
        for kind in sorted({kind_of(r) for r in rows})
    }
    truths = [key_index(r) for r in rows]
    pieces = sorted({rows[i]["piece"] for i in train})
    print(f"{len(rows)} excerpts; exact/MIREX; leave-one-piece-out over {len(pieces)} train pieces")

    def v4(i: int) -> int:
        own, other = feats[i][("stage", "bgate")], feats[i][("keyextractor", "bgate")]
        return int(np.argmax(own)) if own.max() >= V4_RATIO * other.max() else int(np.argmax(other))

    print(
        f"{'v4 rule (fallback ratio 0.81)':<64}"
        + "  ".join(
            f"{g} {summary([mirex(v4(i), rows[i]) for i in idx])}" for g, idx in groups.items()
        )
    )
    best: tuple[float, str, float] | None = None
    for name, names in CANDIDATES.items():
        for l2 in PENALTIES:
            held_out = []
            for piece in pieces:
                keep = [i for i in train if rows[i]["piece"] != piece]
                w = fit([feats[i] for i in keep], [truths[i] for i in keep], names, l2)
                held_out += [
                    mirex(predict(feats[i], names, w)[0], rows[i])
                    for i in train
                    if rows[i]["piece"] == piece
                ]
            w = fit([feats[i] for i in train], [truths[i] for i in train], names, l2)
            cells = "  ".join(
                f"{g} {summary([mirex(predict(feats[i], names, w)[0], rows[i]) for i in idx])}"
                for g, idx in groups.items()
            )
            print(f"{name + f', L2 {l2}':<52}LOPO {summary(held_out)}  {cells}", flush=True)
            score = float(np.mean(np.equal(held_out, 1.0)) + 1e-3 * np.mean(held_out))
            if best is None or score > best[0] + 1e-9:
                best = (score, name, l2)
    assert best is not None
    _, name, l2 = best
    names = CANDIDATES[name]
    w = fit([feats[i] for i in train], [truths[i] for i in train], names, l2)
    print(f"\nchosen by LOPO on train: {name}, L2 {l2}")
    print(f"KEY_MODEL_FEATURES = {names}")
    print(f"KEY_MODEL_WEIGHTS = {tuple(round(float(v), 2) for v in w)}")
    for g, idx in groups.items():
        p = np.array([predict(feats[i], names, w)[1] for i in idx])
        hit = np.array([mirex(predict(feats[i], names, w)[0], rows[i]) == 1.0 for i in idx], float)
        print(
            f"key_confidence on {g}: Brier {np.mean((p - hit) ** 2):.3f} (constant rate {np.mean((hit.mean() - hit) ** 2):.3f}),"
            f" mean {p.mean():.2f}, right {hit.mean():.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
