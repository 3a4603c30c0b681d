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
    """Render `n_tracks` short stereo tracks (testaudio.synth) as wavs and write a manifest Parquet
    with the columns `songmill manifest` exports. Returns the manifest path."""
    import hashlib

    import numpy as np
    from songmill.testaudio.synth import PITCH_CLASSES, STYLES, render_track, write_track

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


class FeaturesMissing(ValueError):
    """A DiT manifest whose tracks have no cached features; the message says how to make them."""


def features_status(manifest: str) -> tuple[int, int]:
    """(rows with a features_url, all rows) of a manifest."""
    table = pq.read_table(manifest)
    if "features_url" not in table.column_names:
        return 0, table.num_rows
    return table.num_rows - table.column("features_url").null_count, table.num_rows


def missing_features_message(manifest: str) -> str:
    """One line: why a manifest cannot train the DiT, and the exact commands that fix it."""
    return (
        f"manifest {manifest} has no cached features (no features_url): the DiT trains on DCAE latents and "
        f"text embeddings computed once by the features stage. Run `songmill train dit --manifest {manifest} "
        f"--dcae-checkpoint DCAE_RUN ...` to compute them first (DCAE_RUN from `songmill train dcae --manifest "
        f"{manifest} --run-dir DCAE_RUN`), or `songmill annotate --stages features --set "
        f"features.dcae_checkpoint=DCAE_RUN` and export the manifest again"
    )


def features_manifest_path(manifest: str) -> str:
    root, _ = os.path.splitext(manifest)
    return f"{root}.features.parquet"


def ensure_features(manifest: str, dcae_checkpoint: str, corpus_root: str, **features_settings: Any) -> tuple[str, bool]:
    """The manifest to train the DiT on: `manifest` itself when its rows have features, else a
    copy with them (`<manifest>.features.parquet`), computed by the features stage with
    `dcae_checkpoint` into the corpus at `corpus_root`. Returns (path, computed now).
    Without a DCAE checkpoint raises FeaturesMissing, whose message names the commands."""
    with_features, rows = features_status(manifest)
    if with_features > 0:
        return manifest, False
    if not dcae_checkpoint:
        raise FeaturesMissing(missing_features_message(manifest))
    out = features_manifest_path(manifest)
    cache_features(manifest, corpus_root, out, **{**features_settings, "dcae_checkpoint": dcae_checkpoint})
    return out, True


def cache_features(manifest: str, corpus_root: str, out_manifest: str, **features_settings: Any) -> str:
    """Run the features stage over a manifest's tracks: shards into the corpus at `corpus_root`,
    rows into its `features` table, and a copy of the manifest with the features columns added.
    A track that fails is left out of the copy (and named on stderr); a stage that cannot run
    at all (weights missing) raises its StageUnavailable, whose message says what to fetch."""
    import sys

    from songmill.annotate.base import StageUnavailable, Track
    from songmill.annotate.features import FeaturesConfig, FeaturesStage
    from songmill.data_schema.store import Corpus, new_run_id, utcnow
    from songmill.model.weights import WeightsMissing

    table = pq.read_table(manifest)
    rows = [{k: v for k, v in r.items() if k not in FEATURE_COLUMNS} for r in table.to_pylist()]
    corpus = Corpus(corpus_root)
    stage = FeaturesStage(FeaturesConfig(**features_settings), corpus=corpus)
    stage.setup()
    out_rows, stage_rows = [], []
    run_id, now = new_run_id(), utcnow()
    for row in rows:
        result = stage.process([Track(row, track_inputs(row))])[0]
        if isinstance(result, StageUnavailable | WeightsMissing):
            raise result
        if isinstance(result, BaseException):
            print(f"features: {row.get('uri', row['track_id'])}: {result}", file=sys.stderr)
            continue
        stage_rows.append({**result, "track_id": row["track_id"], "stage_version": stage.version,
                           "config_hash": stage.config_hash, "run_id": run_id, "created_at": now})
        out_rows.append({**row, **result})
    if not out_rows:
        raise ValueError(f"features: no track of {manifest} could be processed (see the lines above)")
    corpus.write("features", stage_rows)
    tmp = f"{out_manifest}.tmp-{os.getpid()}"
    pq.write_table(pa.Table.from_pylist(out_rows), tmp)
    os.replace(tmp, out_manifest)  # atomic: a killed run leaves no half-written manifest
    return out_manifest


# Columns the features stage adds: a manifest that has them (null) gets them replaced.
FEATURE_COLUMNS = (
    "features_url", "features_sha256", "features_bytes", "latent_frames", "latent_fps", "caption_styles",
    "lyric_tokens", "lyric_tokenizer", "repa_targets", "has_speaker", "dcae_id", "text_encoder_id",
)
