"""Manifests for training: a synthetic one (tests, demo, benchmarks), and the features a DiT
manifest lacks, computed by the features stage through the annotate runner."""

from __future__ import annotations

import os
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from songmill.annotate.settings import build_config
from songmill.data_schema.features import FEATURES
from songmill.data_schema.manifest import features_count
from songmill.data_schema.views import STAGE_KEY_COLUMNS
from songmill.model.config import SAMPLE_RATE


def synthetic_manifest(
    out_dir: str, n_tracks: int = 4, duration_s: float = 3.0, seed: int = 0, lyrics: bool = True
) -> str:
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
        audio = render_track(
            bpm, tonic, mode, duration_s, seed=seed * 1000 + i, style=STYLES[i % len(STYLES)]
        )
        path = os.path.join(out_dir, f"track_{i:02d}.wav")
        write_track(path, audio)
        with open(path, "rb") as f:
            track_id = hashlib.sha256(f.read()).hexdigest()
        lyric = (
            " ".join(words[int(j)] for j in rng.integers(0, len(words), 8))
            if lyrics and i % 2 == 0
            else ""
        )
        rows.append(
            {
                "track_id": track_id,
                "uri": os.path.abspath(path),
                "duration_s": audio.shape[0] / SAMPLE_RATE,
                "sample_rate": SAMPLE_RATE,
                "channels": 2,
                "bpm": bpm,
                "keyscale": f"{tonic} {mode}",
                "key_tonic": tonic,
                "key_mode": mode,
                "qc_pass": True,
                "lyrics": lyric,
            }
        )
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


def missing_features_message(manifest: str) -> str:
    """One line: why a manifest cannot train the DiT, and the exact commands that fix it."""
    return (
        f"manifest {manifest} has no cached features (no features_url): the DiT trains on DCAE latents and "
        f"text embeddings computed once by the features stage. Run `songmill train dit --manifest {manifest} "
        f"--dcae-checkpoint DCAE_RUN ...` to compute them first (DCAE_RUN from `songmill train dcae --manifest "
        f"{manifest} --run-dir DCAE_RUN`), or `songmill annotate --stages features --set "
        f"features.dcae_checkpoint=DCAE_RUN` and export the manifest again. Offline (no umT5 / MERT / mHuBERT / "
        f"WavLM weights), add {_offline_hint()}"
    )


def _offline_hint() -> str:
    from songmill.annotate.features import offline_settings_hint

    return offline_settings_hint()


def refuse_textless_features(features_settings: dict[str, Any]) -> None:
    """The DiT is conditioned on text: features computed without a text encoder cannot train it,
    so say so before the features stage runs rather than after."""
    if str(features_settings.get("text_encoder", "")).strip().lower() == "none":
        raise FeaturesMissing(
            'features.text_encoder = "none" computes features without text embeddings, and the DiT trains on '
            "them: name a text encoder (a umT5 directory), or offline `--set features.text_encoder=tiny-random` "
            "(the tiny preset's encoder with random weights, as `songmill demo` trains)"
        )


def check_features_settings(features_settings: dict[str, Any]) -> None:
    """Before any work: features that could train the DiT (a text encoder), and every model the
    settings name present (all absent ones in one message, with the settings that run offline)."""
    from songmill.annotate.features import FeaturesConfig, check_feature_models
    from songmill.annotate.settings import build_config

    refuse_textless_features(features_settings)
    check_feature_models(build_config(FeaturesConfig, "features", features_settings))


def features_manifest_path(manifest: str) -> str:
    root, _ = os.path.splitext(manifest)
    return f"{root}.features.parquet"


def ensure_features(
    manifest: str, dcae_checkpoint: str, corpus_root: str, **features_settings: Any
) -> tuple[str, bool]:
    """The manifest to train the DiT on: `manifest` itself when its rows have features, else a
    copy with them (`<manifest>.features.parquet`), computed by the features stage with
    `dcae_checkpoint` into the corpus at `corpus_root`. Returns (path, computed now).
    Without a DCAE checkpoint raises FeaturesMissing, whose message names the commands."""
    if features_count(manifest)[0] > 0:
        return manifest, False
    if not dcae_checkpoint:
        raise FeaturesMissing(missing_features_message(manifest))
    check_features_settings(features_settings)
    out = features_manifest_path(manifest)
    cache_features(
        manifest, corpus_root, out, **{**features_settings, "dcae_checkpoint": dcae_checkpoint}
    )
    return out, True


def training_manifest(
    manifest: str,
    dcae_checkpoint: str | None,
    corpus_root: str,
    features_settings: dict[str, Any],
    world_size: int = 1,
) -> str:
    """The manifest a DiT run trains on: `manifest` when its rows have features; else the copy an
    earlier run computed from it (not older than it); else, with `dcae_checkpoint`, a copy after
    the features stage runs into the corpus at `corpus_root` (ensure_features). Without a DCAE,
    or under torchrun (`world_size` > 1: every rank would compute them), FeaturesMissing names
    the commands to run. Says on stderr which manifest it trains on when not `manifest`."""
    import sys

    if features_count(manifest)[0] > 0:
        return manifest
    computed = features_manifest_path(manifest)
    if (
        os.path.exists(computed)
        and os.path.getmtime(computed) >= os.path.getmtime(manifest)
        and features_count(computed)[0] > 0
    ):
        # computed from this manifest by an earlier `train dit` (a --resume, a second run): reuse
        print(
            f"{manifest} has no features: training on {computed}, computed from it earlier",
            file=sys.stderr,
        )
        return computed
    if world_size > 1:
        raise FeaturesMissing(
            missing_features_message(manifest) + " (in one process, before torchrun)"
        )
    if dcae_checkpoint:
        check_features_settings(features_settings)
        print(
            f"{manifest} has no features: running the features stage with DCAE {dcae_checkpoint} "
            f"into {corpus_root} -> {computed}",
            file=sys.stderr,
        )
    path, _ = ensure_features(manifest, dcae_checkpoint or "", corpus_root, **features_settings)
    return path


def cache_features(
    manifest: str, corpus_root: str, out_manifest: str, **features_settings: Any
) -> str:
    """Run the features stage over a manifest's tracks through the annotate runner (what
    `songmill annotate --stages features` runs): the tracks are ingested into the corpus at
    `corpus_root` if they are not there yet, the stage writes its shards, its `features` rows
    with their lineage, an `errors` row per failed track and a `runs` row; then a copy of the
    manifest gets the features columns. The manifest's joined columns (music, lyrics, captions)
    stand in for stage inputs the corpus lacks. A track that fails is left out of the copy (and
    named on stderr); a stage that cannot run at all (weights missing) raises StageUnavailable,
    whose message says what to fetch."""
    import sys

    from songmill.annotate.base import StageUnavailable
    from songmill.annotate.features import FeaturesConfig, FeaturesStage
    from songmill.annotate.ingest import ingest
    from songmill.annotate.runner import run_stages
    from songmill.data_schema.store import Corpus

    rows = [
        {k: v for k, v in r.items() if k not in FEATURE_COLUMNS}
        for r in pq.read_table(manifest).to_pylist()
    ]
    corpus = Corpus(corpus_root)
    ids = [r["track_id"] for r in rows]
    known = set(
        corpus.sql(
            "SELECT track_id FROM tracks WHERE track_id IN (SELECT unnest(?::VARCHAR[]))", [ids]
        )
        .column(0)
        .to_pylist()
    )
    unknown = [r["uri"] for r in rows if r["track_id"] not in known and r.get("uri")]
    if unknown:
        ingest(corpus, unknown)
    stage = FeaturesStage(
        build_config(FeaturesConfig, "features", features_settings), corpus=corpus
    )
    (summary,) = run_stages(
        corpus, [stage], track_ids=ids, given_inputs={r["track_id"]: track_inputs(r) for r in rows}
    )
    if summary.unavailable:
        raise StageUnavailable(summary.unavailable)
    current = {
        r["track_id"]: r
        for r in corpus.sql(
            "SELECT * FROM features WHERE config_hash = ? AND track_id IN (SELECT unnest(?::VARCHAR[]))",
            [stage.config_hash, ids],
        ).to_pylist()
    }
    failed = {
        e["track_id"]: e["message"]
        for e in corpus.sql(
            "SELECT track_id, message FROM errors WHERE run_id = ? AND stage = 'features'",
            [summary.run_id],
        ).to_pylist()
    }
    out_rows = []
    for row in rows:
        features = current.get(row["track_id"])
        if features is None:
            why = failed.get(
                row["track_id"],
                "not in the corpus after ingest (the file changed or is unreadable)",
            )
            print(f"features: {row.get('uri', row['track_id'])}: {why}", file=sys.stderr)
            continue
        out_rows.append({**row, **{c: features[c] for c in FEATURE_COLUMNS}})
    if not out_rows:
        raise ValueError(
            f"features: no track of {manifest} could be processed (see the lines above)"
        )
    tmp = f"{out_manifest}.tmp-{os.getpid()}"
    pq.write_table(pa.Table.from_pylist(out_rows), tmp)
    os.replace(tmp, out_manifest)  # atomic: a killed run leaves no half-written manifest
    return out_manifest


# Columns the features stage adds (its table's, data_schema/features.py): a manifest that has
# them (null) gets them replaced.
FEATURE_COLUMNS: tuple[str, ...] = tuple(
    n for n in FEATURES.schema.names if n not in STAGE_KEY_COLUMNS
)
