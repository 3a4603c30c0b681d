"""Manifests for training: a synthetic one (tests, demo, benchmarks) and feature caching straight
from a manifest (the `features` stage run outside a corpus annotate pass)."""

from __future__ import annotations

import os
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

MANIFEST_COLUMNS = (
    "track_id", "uri", "duration_s", "sample_rate", "channels", "bpm", "keyscale", "key_tonic", "key_mode", "qc_pass",
)


def synthetic_manifest(out_dir: str, n_tracks: int = 4, duration_s: float = 3.0, seed: int = 0, lyrics: bool = True) -> str:
    """Render `n_tracks` short stereo tracks (annotate.synth) as wavs and write a manifest Parquet
    with the columns `songmill manifest` exports. Returns the manifest path."""
    import hashlib

    import numpy as np
    from songmill.annotate.synth import PITCH_CLASSES, STYLES, render_track, write_track

    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    words = ["sing", "the", "night", "away", "light", "my", "heart", "again", "dance", "slow"]
    for i in range(n_tracks):
        tonic = PITCH_CLASSES[int(rng.integers(12))]
        mode = "major" if i % 2 == 0 else "minor"
        bpm = float(rng.integers(80, 160))
        audio = render_track(bpm, tonic, mode, duration_s, seed=seed * 1000 + i, style=STYLES[i % len(STYLES)])
        path = os.path.join(out_dir, f"track_{i:02d}.wav")
        write_track(path, audio)
        with open(path, "rb") as f:
            track_id = hashlib.sha256(f.read()).hexdigest()
        lyric = " ".join(words[int(j)] for j in rng.integers(0, len(words), 8)) if lyrics and i % 2 == 0 else ""
        rows.append({
            "track_id": track_id, "uri": os.path.abspath(path), "duration_s": audio.shape[0] / 44100,
            "sample_rate": 44100, "channels": 2, "bpm": bpm, "keyscale": f"{tonic} {mode}",
            "key_tonic": tonic, "key_mode": mode, "qc_pass": True, "lyrics": lyric,
        })
    manifest = os.path.join(out_dir, "manifest.parquet")
    pq.write_table(pa.Table.from_pylist(rows), manifest)
    return manifest


def track_inputs(row: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The stage inputs a manifest row carries (it is the join of every stage table)."""
    inputs: dict[str, dict[str, Any]] = {"music": row}
    if row.get("lyrics"):
        inputs["lyrics_matches"] = {"lyrics": row["lyrics"]}
    if "is_instrumental" in row:
        inputs["separation"] = row
    captions = {k: v for k, v in row.items() if k.startswith("caption_") and isinstance(v, str)}
    if captions:
        inputs["captions"] = captions
    return inputs


def cache_features(manifest: str, corpus_root: str, out_manifest: str, **features_settings: Any) -> str:
    """Run the features stage over a manifest's tracks: shards into the corpus at `corpus_root`,
    rows into its `features` table, and a copy of the manifest with the features columns added."""
    from songmill.annotate.base import Track
    from songmill.annotate.features import FeaturesConfig, FeaturesStage
    from songmill.data_schema.store import Corpus, new_run_id, utcnow

    table = pq.read_table(manifest)
    rows = table.to_pylist()
    corpus = Corpus(corpus_root)
    stage = FeaturesStage(FeaturesConfig(**features_settings), corpus=corpus)
    stage.setup()
    out_rows, stage_rows = [], []
    run_id, now = new_run_id(), utcnow()
    for row in rows:
        result = stage.process([Track(row, track_inputs(row))])[0]
        if isinstance(result, BaseException):
            raise result
        stage_rows.append({**result, "track_id": row["track_id"], "stage_version": stage.version,
                           "config_hash": stage.config_hash, "run_id": run_id, "created_at": now})
        out_rows.append({**row, **result})
    corpus.write("features", stage_rows)
    pq.write_table(pa.Table.from_pylist(out_rows), out_manifest)
    return out_manifest
