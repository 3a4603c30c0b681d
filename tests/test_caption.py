"""The caption stage with tiny randomly initialised Qwen2-Audio and Qwen2.5-Omni thinker models
(the real transformers classes, a tokenizer trained here with `tokenizers`, Whisper's feature
extractor) saved with save_pretrained and loaded through the stage's loading code; plus the
recaption, tag normalisation and contradiction checks."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import rows, tone, write_audio
from songmill.annotate.base import StageUnavailable, Track
from songmill.annotate.caption import (
    CaptionConfig,
    CaptionStage,
    contradictions,
    normalise_tag,
    parse_tags,
    recaption,
    tag_distribution,
)
from songmill.annotate.ingest import ingest
from songmill.annotate.runner import run_stages

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>",
            "<|IMAGE|>", "<|VIDEO|>", "<|vision_bos|>", "<|vision_eos|>"]  # fmt: skip
CORPUS_TEXT = [
    "genre: rock, pop\nmood: happy, energetic\ninstruments: guitar, drums, bass",
    "An upbeat rock song with guitars.",
]


def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS_TEXT * 20, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIALS[1:],
    )


def save_qwen2_audio(directory) -> str:
    from transformers import (
        Qwen2AudioConfig,
        Qwen2AudioForConditionalGeneration,
        Qwen2AudioProcessor,
        WhisperFeatureExtractor,
    )

    tok = tiny_tokenizer()
    processor = Qwen2AudioProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=128), tokenizer=tok
    )
    config = Qwen2AudioConfig(
        audio_config=dict(d_model=32, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=64, num_mel_bins=128, max_source_positions=1500),
        text_config=dict(model_type="qwen2", vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048),
        audio_token_index=tok.convert_tokens_to_ids("<|AUDIO|>"),
    )  # fmt: skip
    torch.manual_seed(0)
    Qwen2AudioForConditionalGeneration(config).save_pretrained(str(directory))
    processor.save_pretrained(str(directory))
    return str(directory)


def save_omni_thinker(directory) -> str:
    from transformers import (
        Qwen2_5OmniThinkerConfig,
        Qwen2_5OmniThinkerForConditionalGeneration,
        WhisperFeatureExtractor,
    )

    tok = tiny_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIALS}
    config = Qwen2_5OmniThinkerConfig(
        audio_config=dict(d_model=32, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=64, num_mel_bins=128,
                          max_source_positions=1500, n_window=100, output_dim=32),
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32, fullatt_block_indexes=[0]),
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=1, max_position_embeddings=4096,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}),
        audio_token_index=ids["<|AUDIO|>"], image_token_index=ids["<|IMAGE|>"], video_token_index=ids["<|VIDEO|>"],
        audio_start_token_id=ids["<|audio_bos|>"], audio_end_token_id=ids["<|audio_eos|>"], user_token_id=ids["<|im_start|>"],
    )  # fmt: skip
    # The release config names the vision markers too; get_rope_index reads them.
    config.vision_start_token_id, config.vision_end_token_id = (
        ids["<|vision_bos|>"],
        ids["<|vision_eos|>"],
    )
    torch.manual_seed(0)
    Qwen2_5OmniThinkerForConditionalGeneration(config).save_pretrained(str(directory))
    tok.save_pretrained(str(directory))
    WhisperFeatureExtractor(feature_size=128).save_pretrained(str(directory))
    return str(directory)


@pytest.fixture(scope="module")
def qwen2_audio_dir(tmp_path_factory):
    return save_qwen2_audio(tmp_path_factory.mktemp("qwen2audio"))


@pytest.fixture(scope="module")
def omni_dir(tmp_path_factory):
    return save_omni_thinker(tmp_path_factory.mktemp("omni"))


def make_track(
    i: int, seconds: float, bpm=120.0, keyscale="A minor", instrumental=False, language="en"
) -> Track:
    audio = tone(seconds, sr=16000, channels=1, freq=220.0 * (i + 1), seed=i)
    track = Track({"track_id": f"t{i}", "uri": f"mem://t{i}", "duration_s": seconds}, {
        "music": {"bpm": bpm, "keyscale": keyscale, "time_signature": "4/4"},
        "separation": {"is_instrumental": instrumental},
        "transcripts": {"text": "" if instrumental else "la la love", "language": language, "input": "vocals"},
        "structure": {"form": "intro verse chorus outro"},
    })  # fmt: skip
    track._native = (audio, 16000)  # audio in memory, as the runner's decode would hand it over
    return track


@pytest.mark.parametrize("backend", ["qwen2-audio", "qwen2.5-omni"])
def test_batched_generation_matches_one_prompt_at_a_time(backend, qwen2_audio_dir, omni_dir):
    path = qwen2_audio_dir if backend == "qwen2-audio" else omni_dir
    stage = CaptionStage(
        CaptionConfig(
            backend=backend,
            model=path,
            device="cpu",
            styles=("tags", "description"),
            max_new_tokens_scale=0.15,
            batch_size=4,
        )
    )
    stage.setup()
    clips = [make_track(i, s).audio(16000, mono=True)[0] for i, s in enumerate((3.0, 8.0))]
    together = stage.describe(clips)
    stage.config.batch_size = 1
    alone = stage.describe(clips)
    assert together == alone
    assert all(
        set(t) == {"tags", "description"} and all(isinstance(v, str) for v in t.values())
        for t in together
    )


def test_stage_rows_carry_every_style_and_measured_numbers(qwen2_audio_dir):
    stage = CaptionStage(
        CaptionConfig(
            backend="qwen2-audio", model=qwen2_audio_dir, device="cpu", max_new_tokens_scale=0.1
        )
    )
    tracks = [
        make_track(0, 4.0, bpm=128.0, keyscale="F# minor"),
        make_track(1, 2.0, bpm=90.0, keyscale="C major", instrumental=True),
    ]
    bad = Track({"track_id": "nan", "uri": "mem://nan", "duration_s": 1.0})
    bad._native = (np.full(16000, np.nan, np.float32), 16000)
    out = stage.process(tracks + [bad])
    first, second, third = out
    assert isinstance(third, ValueError)
    for row in (first, second):
        assert all(
            row[f"caption_{s}"] is not None for s in ("tags", "description", "detailed", "use_case")
        )
        assert row["model"].startswith("qwen2-audio:")
    assert "128 BPM" in first["caption_recaption"] and "F# minor" in first["caption_recaption"]
    assert "English vocals" in first["caption_recaption"]
    assert "90 BPM" in second["caption_recaption"]
    assert any(
        p in second["caption_recaption"] for p in ("instrumental", "no vocals", "no singing")
    )


def test_missing_weights_write_retryable_errors(tmp_path, corpus, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.delenv("SONGMILL_MODELS", raising=False)
    write_audio(tmp_path / "in" / "a.wav", tone(2.0))
    ingest(corpus, [str(tmp_path / "in")])
    [summary] = run_stages(corpus, [CaptionStage(CaptionConfig(backend="qwen2.5-omni"))])
    assert summary.unavailable and summary.n_error == 1
    [(message, retryable)] = rows(
        corpus, "SELECT message, retryable FROM errors WHERE stage = 'caption'"
    )
    assert retryable and "songmill models fetch qwen2.5-omni-7b" in message
    with pytest.raises(StageUnavailable, match="backend"):
        CaptionStage(CaptionConfig(backend="gpt")).setup()


def test_recaption_backend_runs_offline_through_the_runner(tmp_path, corpus):
    write_audio(tmp_path / "in" / "a.wav", tone(3.0))
    ingest(corpus, [str(tmp_path / "in")])
    [summary] = run_stages(corpus, [CaptionStage(CaptionConfig(backend="recaption"))])
    assert summary.n_ok == 1
    [(tags, text, flagged)] = rows(
        corpus, "SELECT caption_tags, caption_recaption, caption_flagged FROM manifest"
    )
    assert tags == "music" and "3 seconds long" in text and flagged is False


def test_tags_are_normalised_to_one_spelling():
    assert normalise_tag("Hip Hop") == normalise_tag("hiphop") == normalise_tag("rap") == "hip-hop"
    assert normalise_tag(" R&B.") == normalise_tag("rnb") == "r&b"
    assert normalise_tag("Synths") == "synthesizer"
    tags = parse_tags(
        [
            "Genre: Hip Hop, EDM\nMood: joyful; chill\nInstruments: synths, drum kit and bass guitar",
            "A jazzy tune with piano.",
        ]
    )
    assert tags["genres"] == ["hip-hop", "electronic"]
    assert tags["moods"] == ["happy", "relaxed"]
    assert (
        tags["instruments"][:3] == ["synthesizer", "drums", "bass"]
        and "piano" in tags["instruments"]
    )


def test_tag_distribution_shows_a_collapse_to_one_genre():
    collapsed = [{"genres": ["rock"]}] * 9 + [{"genres": ["jazz"]}]
    counts, warning = tag_distribution(collapsed)
    assert counts["rock"] == 9 and warning and "rock" in warning
    spread = [{"genres": [g]} for g in ("rock", "jazz", "pop", "folk", "rock")]
    assert tag_distribution(spread)[1] is None


def test_contradictions_against_measurements():
    facts = {
        "bpm": 128.0,
        "keyscale": "F# minor",
        "time_signature": "4/4",
        "instrumental": False,
        "language": "en",
    }
    text = [
        "A 90 BPM song in Gb minor, 3/4 time, with Spanish lyrics. It is an instrumental track."
    ]
    found = contradictions(text, facts)
    assert any(f.startswith("bpm:") for f in found)
    assert not any(f.startswith("key:") for f in found)  # Gb minor is F# minor
    assert any(f.startswith("time signature:") for f in found)
    assert any(f.startswith("language:") for f in found)
    assert any(f.startswith("vocals:") for f in found)
    assert (
        contradictions(["An upbeat 64 bpm groove in F# minor, 4/4, sung in English."], facts) == []
    )  # half tempo is fine


def test_recaption_numbers_come_from_measurements():
    facts = {
        "bpm": 97.6,
        "keyscale": "D major",
        "time_signature": "3/4",
        "duration_s": 185.0,
        "instrumental": True,
        "language": None,
        "form": "intro verse chorus",
    }
    text = recaption(
        facts,
        {"genres": ["folk"], "moods": ["calm"], "instruments": ["acoustic guitar", "violin"]},
        "seed",
    )
    assert "98 BPM" in text and "D major" in text and "3/4" in text and "3:05" in text
    assert "calm folk" in text and "acoustic guitar and violin" in text
    assert contradictions([text], facts) == []


def test_captions_tags_command_reports_the_spread_and_a_collapse(tmp_path, corpus, capsys):
    from songmill.data_schema.store import utcnow
    from songmill.flows.cli import main

    now = utcnow()
    genres = [["rock"]] * 5 + [["jazz", "rock"]]
    corpus.write("captions", [
        {"track_id": f"t{i}", "stage_version": 1, "config_hash": "x", "run_id": "r", "created_at": now, "genres": g}
        for i, g in enumerate(genres)
    ])  # fmt: skip
    assert main(["captions", "tags", "--corpus", str(corpus.root)]) == 0
    out = capsys.readouterr().out
    assert "rock" in out and "100.0 %" in out and "jazz" in out and "16.7 %" in out
    assert "warning:" in out and "collapsed" in out
