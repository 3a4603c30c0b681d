"""The tokens stage (table lyric_sections): section-tagged lyric variants from transcript segment
times and structure sections, canonical lyrics aligned, G2P for non-Romanised scripts, BPE ids."""

from __future__ import annotations

import pytest
from conftest import rows, tone, write_audio
from songmill.annotate.base import Track
from songmill.annotate.ingest import ingest
from songmill.annotate.lyric_sections import (
    INSTRUMENTAL,
    LyricSectionsConfig,
    LyricSectionsStage,
    align_canonical,
    is_romanised,
    tag_lines,
)
from songmill.annotate.runner import run_stages
from songmill.model.lyric_tokens import LyricTokenizer

SECTIONS = [
    {"start": 0.0, "end": 10.0, "label": "intro"},
    {"start": 10.0, "end": 30.0, "label": "verse"},
    {"start": 30.0, "end": 50.0, "label": "chorus"},
    {"start": 50.0, "end": 70.0, "label": "verse"},
    {"start": 70.0, "end": 90.0, "label": "chorus"},
]
SEGMENTS = [
    {"start": 11.0, "end": 15.0, "text": "walking down the empty road"},
    {"start": 16.0, "end": 20.0, "text": "shadow on my window"},
    {"start": 31.0, "end": 35.0, "text": "hold me tonight"},
    {"start": 51.0, "end": 55.0, "text": "summer in the city"},
    {"start": 71.0, "end": 75.0, "text": "hold me tonight"},
]


def track(**inputs) -> Track:
    return Track({"track_id": "t", "uri": "mem://t", "duration_s": 90.0}, inputs)


@pytest.fixture
def stage():
    s = LyricSectionsStage(LyricSectionsConfig())
    s.setup()
    return s


def test_transcript_lines_get_their_section_tags(stage):
    row = stage.process_track(
        track(
            transcripts={"text": "x", "language": "en", "segments": SEGMENTS},
            structure={"sections": SECTIONS},
        )
    )
    assert row["lyrics_source"] == "transcript"
    assert row["lyrics_tagged"] == (
        "[verse]\nwalking down the empty road\nshadow on my window\n\n[chorus]\nhold me tonight\n\n"
        "[verse]\nsummer in the city\n\n[chorus]\nhold me tonight"
    )
    assert row["lyrics_plain"].splitlines() == [s["text"] for s in SEGMENTS]
    assert row["lyric_token_ids"] == LyricTokenizer().encode_ids(row["lyrics_tagged"])
    assert row["n_lyric_tokens"] == len(row["lyric_token_ids"]) and row["lyrics_phonemes"] is None


def test_canonical_lyric_is_aligned_to_the_sections(stage):
    canonical = "Walking down the empty road\nA shadow on my window\n[Chorus]\nHold me tonight\nSummer in the city\nHold me tonight, oh"
    row = stage.process_track(track(
        transcripts={"text": "x", "language": "en", "segments": SEGMENTS}, structure={"sections": SECTIONS},
        lyrics_matches={"matched": True, "lyric_id": "L1", "lyrics": canonical},
    ))  # fmt: skip
    assert row["lyrics_source"] == "canonical"
    assert row["lyrics_tagged"].split("\n\n") == [
        "[verse]\nWalking down the empty road\nA shadow on my window",
        "[chorus]\nHold me tonight",
        "[verse]\nSummer in the city",
        "[chorus]\nHold me tonight, oh",
    ]
    assert "[Chorus]" not in row["lyrics_plain"]


def test_alignment_is_monotonic():
    heard = [
        ("hold me tonight", "chorus"),
        ("a new verse line", "verse"),
        ("hold me tonight", "chorus"),
    ]
    lines = align_canonical("hold me tonight\nsomething unheard\nhold me tonight", heard, 55.0)
    assert [label for _, label in lines] == ["chorus", "chorus", "chorus"]
    assert tag_lines([("a", "verse"), ("b", None)]) == "[verse]\na\n\n[verse]\nb"


def test_instrumentals_say_so(stage):
    row = stage.process_track(
        track(
            separation={"is_instrumental": True},
            transcripts={"text": "", "input": "none", "segments": []},
        )
    )
    assert (
        row["lyrics_tagged"] == INSTRUMENTAL
        and row["lyrics_plain"] == ""
        and row["lyrics_source"] == "instrumental"
    )
    assert row["n_lyric_tokens"] > 0


def test_non_romanised_lyrics_get_g2p(stage):
    assert not is_romanised("月亮代表我的心") and is_romanised("Déjà vu, ça va")
    segments = [{"start": 12.0, "end": 16.0, "text": "月亮代表我的心"}]
    row = stage.process_track(
        track(
            transcripts={"text": "月亮代表我的心", "language": "zh", "segments": segments},
            structure={"sections": SECTIONS},
        )
    )
    assert row["lyrics_tagged"] == "[verse]\n月亮代表我的心" and row["lyrics_lang"] == "zh"
    assert row["lyrics_phonemes"] and not any(
        "\u4e00" <= ch <= "\u9fff" for ch in row["lyrics_phonemes"]
    )


def test_bpe_tokenizer_from_path(tmp_path):
    tokenizer = LyricTokenizer.train(
        ["[verse]\nhold me tonight\n[chorus]\nsummer in the city"] * 50,
        vocab_size=300,
        min_frequency=1,
    )
    path = tokenizer.save(str(tmp_path / "tok.json"))
    stage = LyricSectionsStage(LyricSectionsConfig(lyric_tokenizer=path))
    stage.setup()
    row = stage.process_track(
        track(
            transcripts={"text": "x", "language": "en", "segments": SEGMENTS[:1]},
            structure={"sections": SECTIONS},
        )
    )
    assert row["lyric_tokenizer"].startswith("bpe-")
    assert row["lyric_token_ids"] == LyricTokenizer.load(path).encode_ids(row["lyrics_tagged"])


def test_stage_through_the_runner(tmp_path, corpus):
    write_audio(tmp_path / "in" / "a.wav", tone(1.0))
    ingest(corpus, [str(tmp_path / "in")])
    [summary] = run_stages(corpus, [LyricSectionsStage(LyricSectionsConfig(), corpus=corpus)])
    assert summary.n_ok == 1
    # Nothing is known about its vocals yet: an empty lyric, not a guess.
    assert rows(corpus, "SELECT lyrics_source, lyrics_tagged FROM manifest") == [("none", "")]


def test_features_read_the_tagged_lyrics_and_every_caption_style():
    from songmill.annotate.features import caption_texts, lyrics_text

    t = track(
        lyric_sections={"lyrics_source": "transcript", "lyrics_tagged": "[verse]\nhold me"},
        transcripts={"text": "hold me", "hallucination": False},
        captions={"caption_tags": "rock, happy", "caption_description": "A rock song.", "caption_detailed": None,
                  "caption_use_case": "A road trip.", "caption_recaption": "A happy rock track at 120 BPM.",
                  "genres": ["rock"], "caption_flagged": False, "model": "qwen2-audio"},
    )  # fmt: skip
    assert lyrics_text(t) == "[verse]\nhold me"
    assert caption_texts(t) == {
        "tags": "rock, happy",
        "description": "A rock song.",
        "use_case": "A road trip.",
        "recaption": "A happy rock track at 120 BPM.",
    }
    instrumental = track(
        lyric_sections={"lyrics_source": "instrumental", "lyrics_tagged": INSTRUMENTAL},
        separation={"is_instrumental": True},
    )
    assert lyrics_text(instrumental) == INSTRUMENTAL
