"""Key estimators on the development set: how the `music` stage's key method was chosen.

For each chroma variant (essentia HPCP: frame size, harmonic weighting, lowest frequency) and each
essentia `Key` profile, key exact and MIREX scores on one half of the development set (default:
the `train` half, the one the stage's settings are chosen on). The stage's own setting is the
row marked `*` (v3's chroma alone); the last rows are KeyExtractor's chroma on the same frames,
v4's rule (the stage chroma's key unless its correlation is below a ratio times KeyExtractor's
chroma's, for a few ratios) and the stage's key model (marked `v6`: a conditional logit over both
chromas' correlations with three profiles and KeyExtractor's chroma's natural seventh, fitted by
benchmarks/devset/fit_key_model.py).
`--alt` adds the alt_* subsets (other soundfonts; v4's ratio and v5's / v6's weights were fitted on the
pooled train halves of both).

    .venv/bin/python benchmarks/devset/compare_keys.py --devset /tmp/songmill-devset [--split train] [--alt]
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_music_accuracy import mirex_key, split_of  # noqa: E402  (benchmarks/ is on sys.path)
from songmill.annotate.audio import decode, to_mono_resampled  # noqa: E402
from songmill.annotate.key import (  # noqa: E402
    KeyConfig,
    estimate_tuning,
    hpcp_frames,
    key_name,
    key_of_chroma,
    key_posterior,
    keyextractor_config,
    model_chroma,
)
from songmill.annotate.tempo import ANALYSIS_SR  # noqa: E402

STAGE = KeyConfig()
FALLBACK = keyextractor_config(STAGE)
RATIOS = (0.7, 0.75, 0.8, 0.81, 0.85, 0.9)
V4_RATIO = 0.81
CHROMAS = {
    "1024 frames, no harmonics (v2)": replace(STAGE, frame=1024, harmonics=0, min_hz=25.0),
    "2048 frames, 8 harmonics": STAGE,
    "2048 frames, 4 harmonics": replace(STAGE, harmonics=4),
    "2048 frames, 12 harmonics": replace(STAGE, harmonics=12),
    "2048 frames, 8 harmonics, from 25 Hz": replace(STAGE, min_hz=25.0),
    "4096 frames, 8 harmonics": replace(STAGE, frame=4096),
}
PROFILES = (
    "bgate",
    "braw",
    "noland",
    "gomez",
    "temperley2005",
    "shaath",
    "tonictriad",
    "krumhansl",
    "edma",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devset", type=Path, required=True)
    parser.add_argument("--split", choices=("train", "test", "all"), default="train")
    parser.add_argument("--limit", type=int, default=0, help="at most this many excerpts")
    parser.add_argument("--alt", action="store_true", help="include the alt_* subsets")
    args = parser.parse_args(argv)
    rows = [json.loads(line) for line in (args.devset / "labels.jsonl").read_text().splitlines()]
    rows = [
        r
        for r in rows
        if r["subset"] != "full"
        and (args.alt or not r["subset"].startswith("alt_"))
        and (args.split == "all" or split_of(r) == args.split)
    ]
    rows = rows[: args.limit] if args.limit else rows
    scores: dict[tuple[str, str], list[float]] = {}
    for row in rows:
        samples, sr = decode(row["path"])
        y = np.ascontiguousarray(to_mono_resampled(samples, sr, ANALYSIS_SR), dtype=np.float32)
        tuning = estimate_tuning(y, ANALYSIS_SR)
        # as the stage: referenced to the measured tuning only when it is 15 cents or more off
        reference = (
            tuning
            if tuning and abs(1200 * np.log2(tuning / 440.0)) >= STAGE.min_tuning_cents
            else 440.0
        )
        for chroma_name, config in CHROMAS.items():
            chroma = hpcp_frames(y, ANALYSIS_SR, config, reference).sum(axis=0)
            for profile in PROFILES:
                key = (
                    key_of_chroma(chroma, replace(config, profile=profile))
                    if chroma.max() > 0
                    else None
                )
                score = mirex_key(
                    key and key["key_tonic"],
                    key and key["key_mode"],
                    row["key_tonic"],
                    row["key_mode"],
                )
                scores.setdefault((chroma_name, profile), []).append(score)
        stage_chroma = hpcp_frames(y, ANALYSIS_SR, STAGE, reference).sum(axis=0)
        fallback_chroma = hpcp_frames(y, ANALYSIS_SR, FALLBACK, reference).sum(axis=0)
        if stage_chroma.max() > 0 and fallback_chroma.max() > 0:
            own, other = (
                key_of_chroma(stage_chroma, STAGE),
                key_of_chroma(fallback_chroma, FALLBACK),
            )
            truth = (row["key_tonic"], row["key_mode"])
            scores.setdefault(("KeyExtractor's chroma", "bgate"), []).append(
                mirex_key(other["key_tonic"], other["key_mode"], *truth)
            )
            for ratio in RATIOS:
                key = own if own["key_strength"] >= ratio * other["key_strength"] else other
                name = f"stage, fallback below {ratio:.2f}"
                scores.setdefault((name, "bgate"), []).append(
                    mirex_key(key["key_tonic"], key["key_mode"], *truth)
                )
            posterior = key_posterior(
                {
                    "stage": model_chroma(stage_chroma, STAGE),
                    "keyextractor": model_chroma(fallback_chroma, FALLBACK),
                }
            )
            scores.setdefault(("key model", "3 profiles"), []).append(
                mirex_key(*key_name(int(posterior.argmax())), *truth)
            )
    print(f"{len(rows)} excerpts, split {args.split}")
    print(f"{'chroma':<40}{'profile':<15}{'exact':>7}{'MIREX':>7}")
    for (chroma_name, profile), values in sorted(
        scores.items(), key=lambda kv: -np.mean(np.equal(kv[1], 1.0))
    ):
        mark = "*" if CHROMAS.get(chroma_name) == STAGE and profile == STAGE.profile else " "
        mark = "v4" if chroma_name == f"stage, fallback below {V4_RATIO:.2f}" else mark
        mark = "v6" if chroma_name == "key model" else mark
        print(
            f"{mark:<3}{chroma_name:<37}{profile:<15}{np.mean(np.equal(values, 1.0)):>7.2f}{np.mean(values):>7.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
