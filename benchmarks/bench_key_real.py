"""Key methods on real productions: the LMMS excerpts whose projects' notes fix the key.

Also reads build_devset.py's render set (scores' key signatures; no mp3 / fx variants): the
same table on the set the key model was fitted on.

Data: benchmarks/devset/build_lmms_devset.py's set (LMMS demo projects rendered by LMMS); an
excerpt has a key label only where its project's own notes support one (devset/lmms_keys.py:
symbolic key-finding, LABEL_RULE). Split by project (bench_music_accuracy.split_of): the choice
is made on the train half only, and both halves are printed.

Methods, all in this one run on the same decoded audio (songmill's decode):
  essentia KeyExtractor defaults (profile bgate; mono 44.1 kHz): the baseline;
  essentia KeyExtractor with each of its other profiles;
  the stage's key as configured (MusicConfig's key_* defaults: v10's vote of annotate/key.py's
  key model over two chromas at 11025 Hz and two essentia keys), its `model` method (v6-v9) and
  its `chroma` method;
  annotate/key.py's chromas (the stage's 36-bin HPCP and KeyExtractor's 12-bin one, on the
  stage's 11025 Hz frames) with each essentia profile (key_of_chroma);
  madmom's key CNN (opt-in: its model is CC BY-NC-SA 4.0; `--madmom` runs it);
  combinations: majority votes of three methods (ties: the first), and the mean of the stage
  model's and madmom's 24-key probabilities.

Printed per method: train exact / MIREX, test exact / MIREX, test exact per variant (orig, mp3,
EQ + reverb), and the test half's shares of exact / fifth / relative / parallel / other answers.
The chosen method: best train MIREX, then train exact (ties: the listed order); the cross-fit
line chooses the same way on the test half and prints its train figures.

    nice -n 10 .venv/bin/python benchmarks/bench_key_real.py --real /tmp/songmill-lmms [--madmom]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import pickle  # noqa: E402
import sys  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_music_accuracy import mirex_key, split_of  # noqa: E402  (benchmarks/ on sys.path)
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
    sharp_name,
    tuning_and_key,
)
from songmill.annotate.music import MusicConfig  # noqa: E402
from songmill.annotate.tempo import ANALYSIS_SR  # noqa: E402

ESSENTIA_PROFILES = (
    "bgate",
    "braw",
    "edma",
    "edmm",
    "temperley",
    "temperley2005",
    "krumhansl",
    "shaath",
    "noland",
    "gomez",
    "diatonic",
    "tonictriad",
    "thpcp",
)
CHROMA_PROFILES = ("bgate", "edma", "edmm", "temperley2005", "noland", "shaath", "krumhansl")
BASELINE = "essentia KeyExtractor defaults (bgate)"
DEFAULT = "stage as configured (MusicConfig key_*)"
CATEGORIES = ("exact", "fifth", "relative", "parallel", "other")


def category(score: float) -> str:
    return {1.0: "exact", 0.5: "fifth", 0.3: "relative", 0.2: "parallel"}.get(score, "other")


def madmom_key_probabilities(path: str) -> np.ndarray:
    """madmom's key CNN: 24 probabilities in annotate/key.py's key order (major C..B, minor)."""
    from songmill.annotate.music_learned import import_madmom

    import_madmom()
    from madmom.features.key import CNNKeyRecognitionProcessor

    global _MADMOM
    if "_MADMOM" not in globals():
        _MADMOM = CNNKeyRecognitionProcessor()
    p = np.asarray(_MADMOM(path), np.float64).reshape(-1)  # A major .. G# major, A minor ..
    out = np.zeros(24)
    for i in range(24):
        out[(i // 12) * 12 + (i % 12 + 9) % 12] = p[i]
    return out


def analyse(row: dict, use_madmom: bool) -> dict[str, tuple[str | None, str | None]]:
    """Every method's (tonic, mode) on one excerpt (plus a few probability vectors)."""
    import essentia

    essentia.log.infoActive = False
    import essentia.standard as es

    samples, sr = decode(row["path"])
    out: dict = {}
    mono44 = np.ascontiguousarray(to_mono_resampled(samples, sr, 44100), dtype=np.float32)
    for profile in ESSENTIA_PROFILES:
        tonic, mode, _ = es.KeyExtractor(profileType=profile)(mono44)
        name = BASELINE if profile == "bgate" else f"essentia KeyExtractor {profile}"
        out[name] = (sharp_name(tonic), mode)
    y = np.ascontiguousarray(to_mono_resampled(samples, sr, ANALYSIS_SR), dtype=np.float32)
    config = MusicConfig().key_config()
    stage = tuning_and_key(y, ANALYSIS_SR, config)
    out[DEFAULT] = (stage["key_tonic"], stage["key_mode"])
    model_only = tuning_and_key(y, ANALYSIS_SR, replace(config, method="model"))
    out["stage key_method=model (v6-v9)"] = (model_only["key_tonic"], model_only["key_mode"])
    chroma_only = tuning_and_key(y, ANALYSIS_SR, replace(config, method="chroma"))
    out["stage key_method=chroma (bgate)"] = (chroma_only["key_tonic"], chroma_only["key_mode"])
    tuning = estimate_tuning(y, ANALYSIS_SR)
    reference = (
        tuning
        if tuning and abs(1200 * np.log2(tuning / 440.0)) >= config.min_tuning_cents
        else 440.0
    )
    stage_config, ke_config = KeyConfig(), keyextractor_config(KeyConfig())
    chromas = {
        "stage chroma (36 bins, 8 harmonics)": (
            stage_config,
            hpcp_frames(y, ANALYSIS_SR, stage_config, reference).sum(axis=0),
        ),
        "KeyExtractor chroma @11 kHz": (
            ke_config,
            hpcp_frames(y, ANALYSIS_SR, ke_config, reference).sum(axis=0),
        ),
    }
    for chroma_name, (chroma_config, chroma) in chromas.items():
        for profile in CHROMA_PROFILES:
            key = (
                key_of_chroma(chroma, replace(chroma_config, profile=profile))
                if chroma.max() > 0
                else None
            )
            out[f"{chroma_name} + {profile}"] = (key and key["key_tonic"], key and key["key_mode"])
    stage_posterior = key_posterior(
        {
            "stage": model_chroma(chromas["stage chroma (36 bins, 8 harmonics)"][1], stage_config),
            "keyextractor": model_chroma(chromas["KeyExtractor chroma @11 kHz"][1], ke_config),
        }
    )
    out["_stage_posterior"] = stage_posterior
    if use_madmom:
        probabilities = madmom_key_probabilities(row["path"])
        out["madmom key CNN (opt-in, CC BY-NC-SA)"] = key_name(int(np.argmax(probabilities)))
        out["_madmom"] = probabilities
    return out


def add_combinations(results: list[dict], methods: list[str]) -> list[str]:
    """Majority votes of three methods among the singles and, with madmom, the mean of the
    stage model's and madmom's probabilities. Returns the combination names added."""
    added = []
    if all("_madmom" in r for r in results):
        name = "mean of stage-model and madmom probabilities (opt-in)"
        for r in results:
            r[name] = key_name(int(np.argmax(r["_stage_posterior"] + r["_madmom"])))
        added.append(name)
    for trio in itertools.combinations(methods, 3):
        name = "vote: " + " | ".join(trio)
        for r in results:
            votes = [r[m] for m in trio]
            r[name] = max(votes, key=lambda v: (votes.count(v), -votes.index(v)))
        added.append(name)
    return added


def summary(rows: list[dict], results: list[dict], method: str) -> dict:
    out: dict = {}
    for half in ("train", "test"):
        scores = [
            mirex_key(*r[method], row["key_tonic"], row["key_mode"])
            for row, r in zip(rows, results, strict=True)
            if split_of(row) == half
        ]
        out[half] = (
            np.mean(np.equal(scores, 1.0)) if scores else np.nan,
            np.mean(scores) if scores else np.nan,
        )
        if half == "test":
            out["categories"] = {c: np.mean([category(s) == c for s in scores]) for c in CATEGORIES}
    for variant in ("orig", "mp3", "fx"):
        scores = [
            mirex_key(*r[method], row["key_tonic"], row["key_mode"])
            for row, r in zip(rows, results, strict=True)
            if split_of(row) == "test" and row.get("variant", "orig") == variant
        ]
        out[variant] = np.mean(np.equal(scores, 1.0)) if scores else np.nan
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--real", type=Path, required=True, help="build_lmms_devset.py's --out")
    parser.add_argument(
        "--madmom", action="store_true", help="also madmom's key CNN (CC BY-NC-SA 4.0 models)"
    )
    parser.add_argument("--cache", type=Path, help="keep / reuse the per-excerpt answers here")
    parser.add_argument(
        "--evidence",
        choices=("any", "excerpt"),
        default="any",
        help="excerpt: only labels from the excerpt's own notes (lmms_keys key_evidence)",
    )
    parser.add_argument(
        "--all-votes", action="store_true", help="print every 3-method vote, not the best few"
    )
    args = parser.parse_args(argv)
    rows = [json.loads(line) for line in (args.real / "labels.jsonl").read_text().splitlines()]
    rows = [
        r
        for r in rows
        if r.get("key_tonic") and (args.evidence == "any" or r.get("key_evidence") == "excerpt")
    ]
    if not rows:
        print(
            f"no key labels in {args.real / 'labels.jsonl'} (rebuild it with build_lmms_devset.py)"
        )
        return 1
    cached = pickle.loads(args.cache.read_bytes()) if args.cache and args.cache.exists() else {}
    results = []
    for row in rows:
        key = (row["path"], args.madmom)  # the answers do not depend on the label
        if key not in cached:
            cached[key] = analyse(row, args.madmom)
        results.append(dict(cached[key]))
    if args.cache:
        args.cache.write_bytes(pickle.dumps(cached))
    halves = {h: sum(split_of(r) == h for r in rows) for h in ("train", "test")}
    projects = {h: len({r["piece"] for r in rows if split_of(r) == h}) for h in halves}
    print(
        f"{len(rows)} labelled excerpts: train {halves['train']} ({projects['train']} projects), "
        f"test {halves['test']} ({projects['test']} projects)"
    )
    singles = [m for m in results[0] if not m.startswith("_")]
    ranked = sorted(singles, key=lambda m: summary(rows, results, m)["train"][::-1], reverse=True)
    # votes among the six best single methods on train (the choice sees train only)
    votes = add_combinations(results, ranked[:6])
    methods = singles + votes
    table = {m: summary(rows, results, m) for m in methods}
    chosen = max(
        methods, key=lambda m: (table[m]["train"][1], table[m]["train"][0], -methods.index(m))
    )
    shown = singles + [
        v for v in votes if args.all_votes or not v.startswith("vote") or v == chosen
    ]
    if not args.all_votes:
        best_votes = sorted(
            (v for v in votes if v.startswith("vote")),
            key=lambda v: table[v]["train"][::-1],
            reverse=True,
        )
        shown += [v for v in best_votes[:3] if v not in shown]
    head = (
        f"{'method':<62}{'train ex':>9}{'MIREX':>7}{'test ex':>9}{'MIREX':>7}{'orig':>6}{'mp3':>6}{'fx':>6}  "
        + " ".join(f"{c[:5]:>5}" for c in CATEGORIES)
    )
    print(head)
    for m in shown:
        s = table[m]
        mark = "*" if m == chosen else ("b" if m == BASELINE else ("d" if m == DEFAULT else " "))
        print(
            f"{mark} {m[:60]:<60}{s['train'][0]:>9.3f}{s['train'][1]:>7.3f}{s['test'][0]:>9.3f}{s['test'][1]:>7.3f}"
            f"{s['orig']:>6.2f}{s['mp3']:>6.2f}{s['fx']:>6.2f}  "
            + " ".join(f"{s['categories'][c]:>5.2f}" for c in CATEGORIES)
        )
    print(f"* chosen on train: {chosen}; b: baseline; d: the stage's current default")
    crossed = max(
        methods, key=lambda m: (table[m]["test"][1], table[m]["test"][0], -methods.index(m))
    )
    print(
        f"cross-fit (chosen on test, reported on train): {crossed}: train exact / MIREX "
        f"{table[crossed]['train'][0]:.3f} / {table[crossed]['train'][1]:.3f}, test "
        f"{table[crossed]['test'][0]:.3f} / {table[crossed]['test'][1]:.3f}"
    )
    print("answers on the original excerpts (truth: stage default / baseline / chosen):")
    for row, r in zip(rows, results, strict=True):
        if row.get("variant") == "orig":  # the real sets (build_lmms_devset.py) only
            name = Path(row["path"]).stem
            print(
                f"  {split_of(row):<6}{name:<48} {row['key_tonic']} {row['key_mode']} "
                f"({row.get('key_evidence')}): "
                + " / ".join(" ".join(map(str, r[m])) for m in (DEFAULT, BASELINE, chosen))
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
