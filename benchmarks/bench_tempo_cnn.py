"""Would a tempo CNN trained on human tempo labels help the music ensemble? (issue 19, v9)

Tempo-CNN (Schreiber & Mueller, ISMIR 2018 and later; PyPI `tempocnn`, code and models AGPL-3.0,
TensorFlow) classifies a mel spectrogram into 256 tempo classes (30-285 BPM). Its models were
trained on real recordings with tapped tempo labels, so it learned a metrical level from people,
not from our renders. Two steps, in two environments:

1. `--measure`: in a Python with tensorflow and tempocnn (`pip install tensorflow-cpu` and
   `pip install --no-deps tempocnn jams`; not songmill's environment, nothing of it is imported by
   songmill), each row of the real-production set through tempocnn's own feature and model code:
   the window-averaged tempo distribution of each model, saved to an .npz.
2. In songmill's environment, with the measurements of bench_music_accuracy.py --real --cache:
   each model alone, the stage's defaults, and the ensemble with and without the tempocnn vote,
   fitted on two sources and scored on the third (every row, and only the songs at their own
   tempo: the retimed renders are where notated and felt level part most).

    /path/to/tf-venv/bin/python benchmarks/bench_tempo_cnn.py --measure --real DIR --out T.npz
    .venv/bin/python benchmarks/bench_tempo_cnn.py --real DIR --cache X.pkl --tempo-cnn T.npz
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import pickle
import sys
from pathlib import Path

import numpy as np

MODELS = ("fcn", "cnn", "ismir2018")
TEMPO_CNN_MIN_BPM = 30.0  # class 0; one class a BPM


def measure(labels: list[dict], out: Path) -> None:
    """tempocnn's window-averaged distribution per row and model (its own code: the reference)."""
    from tempocnn.classifier import TempoClassifier
    from tempocnn.feature import read_features

    classifiers = {name: TempoClassifier(name) for name in MODELS}
    found = {name: [] for name in MODELS}
    for i, row in enumerate(labels):
        features = read_features(row["path"])
        for name, classifier in classifiers.items():
            found[name].append(np.average(classifier.estimate(features), axis=0))
        if i % 50 == 0:
            print(f"{i} / {len(labels)}", flush=True)
    np.savez_compressed(out, **{name: np.stack(v) for name, v in found.items()})


def tempo_votes(distributions: dict[str, np.ndarray], i: int, which: str) -> list[dict]:
    """The tempocnn estimate(s) of row i: one model's peak, or the peak of models' summed
    distributions ("fcn+cnn"), as votes for music.vote."""
    if which == "none":
        return []
    total = sum(distributions[name][i] for name in which.split("+"))
    bpm = float(np.argmax(total)) + TEMPO_CNN_MIN_BPM
    return [{"estimator": "tempocnn", "bpm": bpm, "confidence": None}]


def compare(labels: list[dict], cache: list[dict], distributions: dict[str, np.ndarray]) -> None:
    import bench_music_accuracy as bench
    from songmill.annotate import music
    from songmill.annotate.music import MusicConfig

    config = MusicConfig()
    n = len(labels)
    truth = np.array([row["bpm"] for row in labels])
    source = np.array([row["subset"] for row in labels])
    own = np.array([row["bpm"] == row.get("project_bpm", row["bpm"]) for row in labels])
    sources = sorted(set(source))

    def line(name: str, hits: np.ndarray) -> None:
        cells = " ".join(
            f"{s} {hits[source == s].mean():.3f} (own {hits[(source == s) & own].mean():.3f})"
            for s in sources
        )
        print(f"{name:<34} {cells}  all {hits.mean():.3f}")

    estimates = [bench.cascade_estimates(c, config)[0] for c in cache]
    compound = [bench.compound_of(c, config) for c in cache]
    weight_of = music.estimator_weight
    tempo_weight = {"w": 0.0}

    def weight(name: str, cfg: MusicConfig) -> float:
        return tempo_weight["w"] if name == "tempocnn" else weight_of(name, cfg)

    print(f"{n} rows; acc1 per source (own: the songs at their own tempo)")
    defaults = np.array(
        [
            bench.acc1(music.vote(e, config, k)[0]["bpm"], t)
            for e, k, t in zip(estimates, compound, truth, strict=True)
        ]
    )
    line("stage defaults (fitted on every row)", defaults)
    for name in MODELS:
        peaks = np.argmax(distributions[name], axis=1) + TEMPO_CNN_MIN_BPM
        line(
            f"tempocnn {name} alone",
            np.array([bench.acc1(p, t) for p, t in zip(peaks, truth, strict=True)]),
        )

    grid = list(
        itertools.product(
            ("none", "fcn", "fcn+cnn"),
            (0.5, 1.0),
            (1.0, 2.0, 3.0),
            (0.5, 1.0, 2.0, 4.0),
            (0.0, 0.25, 0.5),
            (0.01, 0.5, 1.0, 2.0),
        )
    )
    results = []
    music.estimator_weight = weight  # the vote's weights, the tempocnn vote's among them
    try:
        for which, w_dsp, w_learned, w_tempo, credit, prior in grid:
            if which == "none" and w_tempo != 0.5:
                continue
            trial = dataclasses.replace(
                config,
                weight_dsp=w_dsp,
                weight_learned=w_learned,
                octave_credit=credit,
                level_prior=prior,
            )
            tempo_weight["w"] = w_tempo
            hits = np.array(
                [
                    bench.acc1(
                        music.vote(
                            estimates[i] + tempo_votes(distributions, i, which), trial, compound[i]
                        )[0]["bpm"],
                        truth[i],
                    )
                    for i in range(n)
                ]
            )
            results.append((which, hits))
    finally:
        music.estimator_weight = weight_of
    for fitted_on, rows in (("every row", np.ones(n, bool)), ("own-tempo rows", own)):
        print(f"\nleave one source out, fitted on the other sources' {fitted_on}:")
        for which in ("none", "fcn", "fcn+cnn"):
            held_hits = np.zeros(n, bool)
            for held in sources:
                train = (source != held) & rows
                best = max((h for w, h in results if w == which), key=lambda h: int(h[train].sum()))
                held_hits[source == held] = best[source == held]
            line(
                f"ensemble + tempocnn {which}" if which != "none" else "ensemble, no tempocnn",
                held_hits,
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--real", type=Path, required=True, help="build_lmms_devset.py's folder")
    parser.add_argument("--measure", action="store_true", help="run tempocnn (needs tensorflow)")
    parser.add_argument("--out", type=Path, help="with --measure: the .npz to write")
    parser.add_argument("--cache", type=Path, help="bench_music_accuracy.py --real's --cache file")
    parser.add_argument("--tempo-cnn", type=Path, help="the .npz --measure wrote")
    args = parser.parse_args(argv)
    labels = [json.loads(line) for line in (args.real / "labels.jsonl").read_text().splitlines()]
    if args.measure:
        if not args.out:
            raise SystemExit("--measure needs --out FILE.npz")
        measure(labels, args.out)
        return 0
    if not (args.cache and args.tempo_cnn):
        raise SystemExit("without --measure: --cache (bench_music_accuracy.py) and --tempo-cnn")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import bench_music_accuracy as bench

    cache, _, _ = pickle.loads(args.cache.read_bytes())
    if any("vote_by" not in c for c in cache):  # caches older than the per-network votes
        from songmill.annotate.music_learned import BeatNetTracker

        tracker = BeatNetTracker((1, 2, 3))
        for c in cache:
            bench.add_votes(c, tracker)
    with np.load(args.tempo_cnn) as found:
        distributions = {name: found[name] for name in MODELS}
    if len(cache) != len(labels) or distributions[MODELS[0]].shape[0] != len(labels):
        raise SystemExit("the cache, the .npz and labels.jsonl must come from the same set")
    compare(labels, cache, distributions)
    return 0


if __name__ == "__main__":
    sys.exit(main())
