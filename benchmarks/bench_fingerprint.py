"""Near-duplicate audio: fingerprint speed, clustering time, precision / recall.

1. A generated set: `--songs` originals (annotate/synth.py; songs come in "artist" groups of three
   that share style, tempo and key and differ only in their seed), each with transformed copies
   (mp3 128 k, ogg, opus, resampled to 22.05 and 48 kHz, -8 dB and +4 dB gain, mono, lead-in
   trims and tail trims of up to 5 s), mixed with `--unrelated` tracks of the same styles, tempi
   and keys. Everything goes through the real stage (decode, 11025 Hz mono, Chromaprint) and the
   index; precision / recall are over pairs (two files of one recording = a true pair).
2. Speed: x realtime per core of the stage (CPU time), with and without decoding, next to the
   same-run baseline of `fpcalc` (Chromaprint's own tool, FFmpeg decoding) on the same files.
3. Clustering `--fingerprints` synthetic fingerprints (random 32-bit values, 5 % planted copies
   with 8 % of their bits flipped and shifted by up to 5 s), next to the same-run baseline of a
   brute-force all-pairs scan over 2 000 of them, extrapolated to the full count.

    .venv/bin/python benchmarks/bench_fingerprint.py --songs 60 --unrelated 120 --fingerprints 100000
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import shutil
import subprocess
import tempfile
import time

import numpy as np
import soundfile as sf
from songmill.annotate.audio import decode, resample
from songmill.annotate.base import Track
from songmill.annotate.fingerprint import FingerprintConfig, FingerprintStage, _similarity, cluster
from songmill.annotate.synth import PITCH_CLASSES, STYLES, render_track

SR = 44100


def transforms(audio: np.ndarray, rng: np.random.Generator) -> dict[str, tuple[np.ndarray, int, dict]]:
    lead, tail = rng.uniform(1.0, 5.0), rng.uniform(1.0, 5.0)
    return {
        "mp3-128k.mp3": (audio, SR, {"format": "MP3", "subtype": "MPEG_LAYER_III", "compression_level": 0.6, "bitrate_mode": "CONSTANT"}),
        "vorbis.ogg": (audio, SR, {"format": "OGG", "subtype": "VORBIS"}),
        "opus.opus": (resample(audio, SR, 48000), 48000, {"format": "OGG", "subtype": "OPUS"}),
        "22k.flac": (resample(audio, SR, 22050), 22050, {}),
        "48k.wav": (resample(audio, SR, 48000), 48000, {}),
        "quiet.wav": (audio * 10 ** (-8 / 20), SR, {}),
        "loud.wav": (np.clip(audio * 10 ** (4 / 20), -1, 1), SR, {}),
        "mono.wav": (audio.mean(axis=1), SR, {}),
        "leadtrim.flac": (audio[int(lead * SR):], SR, {}),
        "tailtrim.flac": (audio[: -int(tail * SR)], SR, {}),
    }


def build_set(folder: str, songs: int, unrelated: int, seconds: float) -> list[tuple[str, str]]:
    """(path, recording id) of every file."""
    rng = np.random.default_rng(0)
    files = []
    groups = (songs + unrelated + 2) // 3
    specs = []
    for g in range(groups):  # an "artist": one style, tempo and key, several songs
        style, tonic = STYLES[g % len(STYLES)], PITCH_CLASSES[int(rng.integers(12))]
        mode, bpm = ("major", "minor")[g % 2], float(rng.integers(84, 150))
        specs += [(style, tonic, mode, bpm, int(rng.integers(2**31))) for _ in range(3)]
    rng.shuffle(specs)
    for n, (style, tonic, mode, bpm, seed) in enumerate(specs[: songs + unrelated]):
        audio = render_track(bpm, tonic, mode, seconds, seed=seed, style=style)
        rec = f"rec{n:04d}"
        original = os.path.join(folder, f"{rec}.wav")
        sf.write(original, audio, SR)
        files.append((original, rec))
        if n < songs:
            for name, (data, sr, opts) in transforms(audio, rng).items():
                path = os.path.join(folder, f"{rec}-{name}")
                sf.write(path, data, sr, **opts)
                files.append((path, rec))
    return files


def cpu() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_utime + resource.getrusage(resource.RUSAGE_SELF).ru_stime


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def fingerprint_files(files: list[tuple[str, str]]) -> tuple[list[np.ndarray], dict]:
    stage = FingerprintStage()
    stage.setup()
    prints, audio_s, decode_cpu, fp_cpu = [], 0.0, 0.0, 0.0
    for path, _ in files:
        t0 = cpu()
        samples, sr = decode(path)
        t1 = cpu()
        track = Track({"track_id": path, "uri": path})
        track._native = (samples, sr)  # the runner decodes once per batch and shares it the same way
        row = stage.process_track(track)
        fp_cpu += cpu() - t1
        decode_cpu += t1 - t0
        audio_s += samples.shape[0] / sr
        prints.append(np.frombuffer(row["fingerprint"], dtype="<u4").astype(np.uint32))
    fpcalc_audio = 0.0
    t0 = children_cpu()
    for path, _ in files:
        out = subprocess.run(["fpcalc", "-raw", "-length", "120", path], capture_output=True, text=True)
        if "FINGERPRINT=" not in out.stdout:  # (it exits 3 on a benign end-of-file decode warning)
            raise RuntimeError(f"fpcalc failed on {path}: {out.stderr.strip()}")
        fpcalc_audio += sf.info(path).duration
    fpcalc_cpu = children_cpu() - t0
    speed = {
        "audio_s": audio_s,
        "stage_x_realtime_per_core": audio_s / fp_cpu,
        "stage_with_decode_x_realtime_per_core": audio_s / (fp_cpu + decode_cpu),
        "fpcalc_x_realtime_per_core": fpcalc_audio / fpcalc_cpu,
    }
    speed["stage_with_decode_vs_fpcalc"] = speed["stage_with_decode_x_realtime_per_core"] / speed["fpcalc_x_realtime_per_core"]
    return prints, speed


def precision_recall(files: list[tuple[str, str]], prints: list[np.ndarray], cfg: FingerprintConfig) -> dict:
    found = cluster([p for p, _ in files], prints, cfg)
    truth = [rec for _, rec in files]
    tp = fp = fn = 0
    for i, j in itertools.combinations(range(len(files)), 2):
        same_rec, same_cluster = truth[i] == truth[j], found.cluster[i] == found.cluster[j]
        tp += same_rec and same_cluster
        fp += (not same_rec) and same_cluster
        fn += same_rec and not same_cluster
    missed = sorted({os.path.basename(files[i][0]).split("-", 1)[-1] for i, j in itertools.combinations(range(len(files)), 2)
                     if truth[i] == truth[j] and found.cluster[i] != found.cluster[j]})
    return {"files": len(files), "true_pairs": tp + fn, "precision": tp / max(tp + fp, 1), "recall": tp / max(tp + fn, 1),
            "false_pairs": fp, "missed_pairs": fn, "missed_kinds": missed[:12]}


def clustering_speed(n: int, cfg: FingerprintConfig) -> dict:
    rng = np.random.default_rng(1)
    frames = 950  # 120 s
    prints = list(rng.integers(0, 2**32, (n, frames), dtype=np.uint64).astype(np.uint32))
    planted = n // 20
    for i in range(planted):
        flips = (rng.random((frames, 32)) < 0.08) @ (np.uint64(1) << np.arange(32, dtype=np.uint64))
        prints[n - planted + i] = (prints[i] ^ flips.astype(np.uint32))[int(rng.integers(0, 40)):]
    ids = [f"{i:07d}" for i in range(n)]
    t0 = time.perf_counter()
    found = cluster(ids, prints, cfg)
    index_s = time.perf_counter() - t0
    recovered = sum(found.cluster[i] == found.cluster[n - planted + i] for i in range(planted))
    sample = 2000
    t0 = time.perf_counter()
    for i in range(sample):  # brute force: every pair at every offset up to 5 s (sampled offsets)
        for j in range(i + 1, min(sample, i + 51)):
            max(_similarity(prints[i], prints[j], off, 100) for off in range(-40, 41, 8))
    pairs_done = sum(min(sample, i + 51) - i - 1 for i in range(sample))
    brute_pair_s = (time.perf_counter() - t0) / pairs_done * 10  # x10: all 81 offsets, not every 8th
    brute_full_s = brute_pair_s * n * (n - 1) / 2
    return {"fingerprints": n, "index_cluster_s": index_s, "planted_copies": planted, "recovered": int(recovered),
            "false_edges": int(found.edges - recovered), "candidate_pairs": found.pairs_scored,
            "brute_force_all_pairs_s_extrapolated": brute_full_s, "speedup_vs_brute_force": brute_full_s / index_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--songs", type=int, default=60)
    parser.add_argument("--unrelated", type=int, default=120)
    parser.add_argument("--seconds", type=float, default=45.0)
    parser.add_argument("--fingerprints", type=int, default=100_000)
    args = parser.parse_args()
    cfg = FingerprintConfig()
    folder = tempfile.mkdtemp(prefix="bench-fp-")
    try:
        files = build_set(folder, args.songs, args.unrelated, args.seconds)
        prints, speed = fingerprint_files(files)
        report = {"speed": speed, "accuracy": precision_recall(files, prints, cfg)}
        print(json.dumps(report, indent=1, default=lambda o: o.item()), flush=True)
        report["clustering"] = clustering_speed(args.fingerprints, cfg)
        print(json.dumps(report, indent=1, default=lambda o: o.item()))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
