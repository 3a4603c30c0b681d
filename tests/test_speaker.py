"""Speaker embeddings with Resemblyzer's real weights: the port equals Resemblyzer's own encoder,
one espeak-ng voice is closer to itself than to other voices, and the features stage embeds the
vocal stem (256-d) and gives instrumentals the zero vector."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import soundfile as sf
from packaged import packaged
from songmill.annotate.audio import resample
from songmill.annotate.base import Track

LINES = [
    "I hold your hand tonight\nwe walk the golden road",
    "the river runs away\noh my heart burn again",
]
VOICES = ("en-us", "en-us+f3", "en-us+klatt")


@pytest.fixture(scope="module")
def embedder():
    from songmill.annotate.speaker import ResemblyzerEmbedder

    return ResemblyzerEmbedder(packaged("resemblyzer"))


def _sung(line: int, voice: str) -> np.ndarray:
    from songmill.testaudio.sung import sing

    try:
        audio, sr = sing(LINES[line], seed=line + 5, voice=voice)
    except (OSError, RuntimeError, ValueError) as exc:
        pytest.skip(f"espeak-ng: {exc}")
    return resample(audio, sr, 16000)


def test_port_equals_resemblyzers_own_encoder(embedder):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from resemblyzer import VoiceEncoder
    original = VoiceEncoder(device="cpu", verbose=False)  # loads the wheel's pretrained.pt itself
    wav = embedder.preprocess(_sung(0, "en-us"))
    assert 1.0 < wav.size / 16000 < 10.0
    from songmill.model.voice_encoder import embed_utterance

    np.testing.assert_allclose(
        embed_utterance(embedder.model, wav), original.embed_utterance(wav), atol=1e-5
    )


def test_one_voice_is_closer_to_itself_than_to_other_voices(embedder):
    emb = {(v, i): embedder.embed(_sung(i, v)) for v in VOICES for i in (0, 1)}
    assert all(abs(float(np.linalg.norm(e)) - 1.0) < 1e-4 for e in emb.values())
    for voice in VOICES:
        same = float(emb[(voice, 0)] @ emb[(voice, 1)])  # different lyrics, same voice
        others = [
            float(emb[(voice, i)] @ emb[(other, j)])
            for other in VOICES
            if other != voice
            for i in (0, 1)
            for j in (0, 1)
        ]
        assert same > max(others) + 0.05, (voice, same, max(others))


def test_silence_gives_the_zero_vector(embedder):
    assert not embedder.embed(np.zeros(16000 * 3, np.float32)).any()


def test_features_stage_embeds_the_vocal_stem(embedder, corpus, tmp_path):
    import torch
    from songmill.annotate.features import FeaturesConfig, FeaturesStage
    from songmill.data_schema.shards import FeatureShard
    from songmill.data_schema.store import utcnow
    from songmill.model.config import preset
    from songmill.model.dcae import MusicDCAE
    from songmill.model.weights import save_module

    torch.manual_seed(0)
    dcae_cfg = preset("tiny").dcae
    save_module(MusicDCAE(dcae_cfg), dcae_cfg.to_dict(), str(tmp_path / "dcae"), "dcae")
    voice = _sung(0, "en-us+f3")
    stem = str(tmp_path / "vocals.wav")
    sf.write(stem, voice, 16000)
    mix = str(tmp_path / "mix.wav")  # the mix: a different voice, so the stem is what must be heard
    sf.write(mix, np.pad(_sung(1, "en-us"), (0, 16000)), 16000)
    corpus.write("lyrics", [{"lyric_id": "L1", "lyrics": LINES[0], "created_at": utcnow()}])
    stage = FeaturesStage(FeaturesConfig(dcae_checkpoint=str(tmp_path / "dcae"), text_encoder="tiny-random", mert="none",
                                         mhubert="none", speaker="resemblyzer"), corpus=corpus)  # fmt: skip
    stage.setup()
    sung = Track({"track_id": "a", "uri": mix, "duration_s": 4.0},
                 {"lyrics_matches": {"lyric_id": "L1", "matched": True, "score": 0.9},
                  "separation": {"is_instrumental": False, "vocals_uri": stem}})  # fmt: skip
    instrumental = Track(
        {"track_id": "b", "uri": mix, "duration_s": 4.0}, {"separation": {"is_instrumental": True}}
    )
    rows = stage.process([sung, instrumental])
    sung_shard, inst_shard = (FeatureShard.open(r["features_url"]) for r in rows)
    vector = sung_shard.speaker().numpy()
    assert (
        rows[0]["has_speaker"] and vector.shape == (256,) and sung_shard.meta["speaker_dim"] == 256
    )
    assert float(vector @ embedder.embed(voice)) > 0.99  # the stem's voice (float16 in the shard)
    assert float(vector @ embedder.embed(_sung(1, "en-us"))) < 0.9
    assert (
        not rows[1]["has_speaker"]
        and inst_shard.speaker().shape == (256,)
        and not inst_shard.speaker().any()
    )
