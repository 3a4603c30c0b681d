"""The features stage with tiny randomly initialised real models (HubertModel for mHuBERT and a
MERT-like 24 kHz Hubert, WavLMForXVector for the speaker, the tiny DCAE and text encoder) saved
with save_pretrained / save_module and loaded back through the stage's own loading code."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from songmill.annotate.base import StageUnavailable, Track
from songmill.annotate.features import FeaturesConfig, FeaturesStage
from songmill.annotate.runner import run_stages
from songmill.data_schema.shards import FeatureShard
from songmill.data_schema.store import utcnow

SMALL_SSL = dict(
    hidden_size=16,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=32,
    conv_dim=(8,) * 7,
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=2,
)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    from songmill.model.config import preset
    from songmill.model.dcae import MusicDCAE
    from songmill.model.weights import save_module
    from transformers import (
        HubertConfig,
        HubertModel,
        Wav2Vec2FeatureExtractor,
        WavLMConfig,
        WavLMForXVector,
    )

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    paths = {name: str(root / name) for name in ("dcae", "mert", "mhubert", "speaker")}
    dcae_cfg = preset("tiny").dcae
    save_module(MusicDCAE(dcae_cfg), dcae_cfg.to_dict(), paths["dcae"], "dcae")
    HubertModel(HubertConfig(**{**SMALL_SSL, "hidden_size": 24})).save_pretrained(paths["mert"])
    Wav2Vec2FeatureExtractor(sampling_rate=24000, do_normalize=True).save_pretrained(paths["mert"])
    HubertModel(HubertConfig(**SMALL_SSL)).save_pretrained(paths["mhubert"])
    Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=False).save_pretrained(
        paths["mhubert"]
    )
    xvector = WavLMConfig(
        **SMALL_SSL,
        tdnn_dim=(8, 8),
        tdnn_kernel=(3, 1),
        tdnn_dilation=(1, 1),
        xvector_output_dim=512,
    )
    WavLMForXVector(xvector).save_pretrained(paths["speaker"])
    Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True).save_pretrained(
        paths["speaker"]
    )
    return paths


def features_config(models, **overrides) -> FeaturesConfig:
    values = dict(
        dcae_checkpoint=models["dcae"],
        text_encoder="tiny-random",
        mert=models["mert"],
        mhubert=models["mhubert"],
        speaker=models["speaker"],
        ssl_chunk_s=30.0,
    )
    return FeaturesConfig(**{**values, **overrides})


@pytest.fixture
def two_tracks(corpus, tmp_path):
    from conftest import tone, write_audio

    rows, now = [], utcnow()
    for i, seconds in enumerate((2.0, 1.3)):
        path = write_audio(tmp_path / f"t{i}.wav", tone(seconds, freq=220.0 * (i + 1), seed=i))
        rows.append(
            {
                "track_id": f"track{i}",
                "uri": path,
                "duration_s": seconds,
                "sample_rate": 44100,
                "channels": 2,
                "run_id": "r",
                "created_at": now,
            }
        )
    corpus.write("tracks", rows)
    corpus.write(
        "music",
        [
            {
                "track_id": "track0",
                "stage_version": 1,
                "config_hash": "x",
                "run_id": "r",
                "created_at": now,
                "bpm": 120.0,
                "keyscale": "A minor",
            }
        ],
    )
    return rows


def test_stage_writes_content_addressed_float16_shards(corpus, two_tracks, models):
    stage = FeaturesStage(features_config(models), corpus=corpus)
    summary = run_stages(corpus, [stage])[0]
    assert (summary.n_ok, summary.n_error) == (2, 0)
    con = corpus.connect()
    rows = {
        r["track_id"]: r for r in con.sql("SELECT * FROM features").to_arrow_table().to_pylist()
    }
    assert set(rows) == {"track0", "track1"}
    for track in two_tracks:
        row = rows[track["track_id"]]
        with open(row["features_url"], "rb") as f:
            blob = f.read()
        assert hashlib.sha256(blob).hexdigest() == row["features_sha256"]
        assert row["features_url"].endswith(f"{row['features_sha256']}.safetensors")
        shard = FeatureShard.open(row["features_url"])
        mel_frames = int(track["duration_s"] * 44100) // 512 + 1
        assert shard.latent_frames == math.ceil(mel_frames / 8) == row["latent_frames"]
        assert shard._get("latent").dtype == torch.float16
        assert shard.latent().shape == (8, 16, shard.latent_frames)
        targets = shard.repa_targets()
        assert (
            abs(targets["mert"].shape[0] - track["duration_s"] * 75) <= 2
            and targets["mert"].shape[1] == 24
        )
        assert (
            abs(targets["mhubert"].shape[0] - track["duration_s"] * 50) <= 2
            and targets["mhubert"].shape[1] == 16
        )
        assert shard.text_embedding("tags").shape[-1] == 32
        assert row["repa_targets"] == ["mert", "mhubert"] and "tags" in row["caption_styles"]
    assert FeatureShard.open(rows["track0"]["features_url"]).caption("tags") == "120 bpm, A minor"
    # crops keep the REPA targets aligned with the latent frames
    crop = FeatureShard.open(rows["track0"]["features_url"]).repa_targets(0.5, 1.0)
    assert crop["mert"].shape[0] == 75 and crop["mhubert"].shape[0] == 50
    # a second run finds nothing left to do
    assert run_stages(corpus, [stage])[0].n_ok == 0


def test_lyrics_become_token_ids_and_instrumentals_get_no_speaker(models, tmp_path, corpus):
    from conftest import tone, write_audio
    from songmill.model.lyric_tokens import LyricTokenizer

    texts = ["sing the night away", "light my heart again", "dance slow tonight"] * 20
    tokenizer_path = str(tmp_path / "bpe.json")
    LyricTokenizer.train(texts, vocab_size=300, min_frequency=1).save(tokenizer_path)
    corpus.write(
        "lyrics", [{"lyric_id": "L1", "lyrics": "sing the night away", "created_at": utcnow()}]
    )
    stage = FeaturesStage(features_config(models, lyric_tokenizer=tokenizer_path), corpus=corpus)
    stage.setup()
    path = write_audio(tmp_path / "v.wav", tone(1.0))
    # the matched lyric's text comes from the corpus lyrics catalog
    sung = Track(
        {"track_id": "a", "uri": path, "duration_s": 1.0},
        {"lyrics_matches": {"lyric_id": "L1", "matched": True, "score": 0.9}},
    )
    instrumental = Track(
        {"track_id": "b", "uri": path, "duration_s": 1.0}, {"separation": {"is_instrumental": True}}
    )
    rows = stage.process([sung, instrumental])
    assert rows[0]["lyric_tokenizer"].startswith("bpe-")
    sung_shard, inst_shard = (FeatureShard.open(r["features_url"]) for r in rows)
    ids = sung_shard.lyric_ids()
    assert (
        ids[0] == 1 and ids[-1] == 2 and 2 < len(ids) < len("sing the night away") + 2
    )  # BPE merges
    assert int(ids.max()) < 300
    assert (
        rows[0]["has_speaker"]
        and sung_shard.speaker().shape == (512,)
        and sung_shard.speaker().abs().sum() > 0
    )
    assert not rows[1]["has_speaker"] and float(inst_shard.speaker().abs().sum()) == 0.0
    assert len(inst_shard.lyric_ids()) == 0 and "instrumental" in inst_shard.caption("tags")


def test_missing_weights_make_the_stage_unavailable(models, corpus, two_tracks, tmp_path):
    missing = str(tmp_path / "no-mert")
    stage = FeaturesStage(features_config(models, mert=missing), corpus=corpus)
    with pytest.raises(StageUnavailable, match="features.mert"):
        stage.setup()
    summary = run_stages(corpus, [stage])[0]
    assert summary.unavailable and "no-mert" in summary.unavailable
    errors = (
        corpus.connect().execute("SELECT retryable FROM errors WHERE stage = 'features'").fetchall()
    )
    assert errors and all(r[0] for r in errors)
    with pytest.raises(StageUnavailable, match="DCAE"):
        FeaturesStage(features_config(models, dcae_checkpoint=""), corpus=corpus).setup()
    with pytest.raises(StageUnavailable, match="corpus"):
        FeaturesStage(features_config(models)).setup()


def test_pickle_dcae_checkpoint_is_refused(models, tmp_path, corpus):
    (tmp_path / "dcae").mkdir()
    torch.save({"w": torch.zeros(1)}, tmp_path / "dcae" / "dcae.pt")
    with pytest.raises(StageUnavailable, match="pickle"):
        FeaturesStage(
            features_config(models, dcae_checkpoint=str(tmp_path / "dcae")), corpus=corpus
        ).setup()


def test_dit_trains_with_repa_on_the_exported_manifest(corpus, two_tracks, models, tmp_path):
    from songmill.train.config import TrainConfig
    from songmill.train.loop import train

    stage = FeaturesStage(features_config(models), corpus=corpus)
    run_stages(corpus, [stage])
    manifest = str(tmp_path / "manifest.parquet")
    pq.write_table(corpus.connect().sql("SELECT * FROM manifest").to_arrow_table(), manifest)
    cfg = TrainConfig(
        kind="dit",
        batch_size=2,
        max_steps=2,
        max_crop_s=1.0,
        repa_weight=1.0,
        progress=False,
        val_every=0,
        ckpt_every=0,
        log_every=1,
        warmup_steps=1,
    )
    result = train(cfg, manifest, str(tmp_path / "run"))
    from songmill.train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(result.checkpoint)
    weights = ckpt.weights("dit")
    # one projector per REPA target, in the order of the DiT config's repa_targets (mert, mhubert)
    assert {"projectors.0.4.weight", "projectors.1.4.weight"} <= set(weights)
    assert weights["projectors.0.4.weight"].shape[0] == 24
    assert np.isfinite(result.losses).all()
