"""Windows cut on musical boundaries: each starts on a downbeat or section start, lasts at most
240 s, carries its own lyric slice and tempo, and inherits its track's split."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from songmill.data_schema.manifest import ManifestRecord, reproduce_manifest, write_manifest
from songmill.data_schema.store import utcnow
from songmill.data_schema.windows import (
    WindowError,
    WindowOptions,
    cut_windows,
    lyric_slice,
    timed_lines,
    window_bpm,
)
from songmill.flows.cli import main

KEY = dict(stage_version=1, config_hash="c", run_id="r")


def _song(
    corpus,
    track_id: str,
    duration: float,
    bpm: float,
    sections: list[tuple[float, float, str]],
    lines: list[tuple[float, float, str]],
    instrumental: bool = False,
) -> None:
    """A track with beats at `bpm` (4/4 downbeats), sections and timed transcript lines."""
    now = utcnow()
    beats = np.arange(0.5, duration, 60.0 / bpm)
    corpus.write(
        "tracks",
        [dict(track_id=track_id, uri=f"/m/{track_id}.wav", duration_s=duration, created_at=now)],
    )
    corpus.write(
        "music",
        [
            dict(
                track_id=track_id,
                created_at=now,
                **KEY,
                bpm=bpm,
                keyscale="A minor",
                time_signature="4/4",
                beats=beats.tolist(),
                downbeats=beats[::4].tolist(),
            )
        ],
    )
    corpus.write(
        "structure",
        [
            dict(
                track_id=track_id,
                created_at=now,
                **KEY,
                sections=[
                    dict(start=a, end=b, label=lab, confidence=1.0) for a, b, lab in sections
                ],
            )
        ],
    )
    corpus.write(
        "transcripts",
        [
            dict(
                track_id=track_id,
                created_at=now,
                **KEY,
                text=" ".join(t for *_, t in lines),
                language="en",
                segments=[dict(start=a, end=b, text=t) for a, b, t in lines],
                hallucination=False,
            )
        ],
    )
    corpus.write(
        "separation", [dict(track_id=track_id, created_at=now, **KEY, is_instrumental=instrumental)]
    )


def test_windows_start_on_downbeats_and_tile_the_track():
    downbeats = np.arange(0.5, 300, 2.0)  # 120 bpm 4/4
    spans = cut_windows(300.0, WindowOptions(60, "downbeat"), downbeats)
    assert spans[0][0] == 0.5 and all(
        abs((s - 0.5) / 2 - round((s - 0.5) / 2)) < 1e-6 for s, _ in spans
    )
    assert all(
        b == c for (_, b), (c, _) in zip(spans, spans[1:], strict=False)
    )  # each ends where the next starts
    assert all(abs((e - s) - 60) <= 1.0 for s, e in spans[:-1]) and all(
        e - s <= 240 for s, e in spans
    )
    # a 600 s window length is refused; a 240 s one on a track with sparse boundaries never exceeds 240 s
    with pytest.raises(WindowError):
        WindowOptions(600)
    spans = cut_windows(900.0, WindowOptions(240, "section"), [], [0.0, 500.0])
    assert spans and all(e - s <= 240 for s, e in spans)
    assert cut_windows(100.0, WindowOptions(60), []) == []  # no boundary: no window


def test_section_windows_start_on_section_starts():
    starts = [0.0, 12.0, 40.0, 71.0, 95.0, 130.0, 170.0]
    spans = cut_windows(200.0, WindowOptions(60, "section"), np.arange(0, 200, 2.0), starts)
    assert [s for s, _ in spans] == [0.0, 71.0, 130.0]
    assert spans[-1][1] == 200.0


def test_lyric_slice_and_local_tempo():
    sections = [
        dict(start=0.0, end=30.0, label="verse"),
        dict(start=30.0, end=60.0, label="chorus"),
    ]
    segments = [
        dict(start=5, end=9, text="first line"),
        dict(start=31, end=35, text="hook  line"),
        dict(start=58, end=64, text="late"),
    ]
    heard = timed_lines(segments)
    tagged, plain = lyric_slice(heard, sections, 0.0, 60.0)
    assert (
        tagged == "[verse]\nfirst line\n\n[chorus]\nhook line" and plain == "first line\nhook line"
    )
    assert lyric_slice(heard, sections, 61.0, 90.0) == ("[chorus]\nlate", "late")
    assert lyric_slice(heard, sections, 100.0, 160.0) == ("[instrumental]", "")
    # matched canonical lyrics: their lines, placed at the segments they match (two in one segment
    # spread over it; a line the recogniser missed goes with the previous one)
    segments = [
        dict(start=0, end=8, text="I hear your mind outside, you breathe my winter"),
        dict(start=40, end=44, text="away I give while question"),
    ]
    canonical = "[Verse 1]\nI hear your mind outside\nyou breathe my winter\nla la unheard\n\n[Chorus]\naway I give wild question"
    placed = timed_lines(segments, canonical)
    assert [line for line, _ in placed] == [
        "I hear your mind outside",
        "you breathe my winter",
        "la la unheard",
        "away I give wild question",
    ]
    assert [round(t, 2) for _, t in placed] == [1.33, 4.0, 6.67, 42.0]
    assert lyric_slice(placed, sections, 30.0, 60.0) == (
        "[chorus]\naway I give wild question",
        "away I give wild question",
    )
    beats = list(np.arange(0, 30, 60 / 100)) + list(np.arange(30, 60, 60 / 140))
    assert window_bpm(beats, 0, 30, 120.0) == pytest.approx(100, abs=0.5)
    assert window_bpm(beats, 30, 60, 120.0) == pytest.approx(140, abs=0.5)
    assert window_bpm(beats, 30, 60, 280.0) == pytest.approx(
        280, abs=1
    )  # kept on the track's level
    assert window_bpm(beats[:3], 0, 30, 120.0) == 120.0


def test_manifest_windows_carry_their_own_lyrics_tempo_and_split(corpus, tmp_path):
    sections = [
        (0.0, 40.0, "verse"),
        (40.0, 80.0, "chorus"),
        (80.0, 130.0, "verse"),
        (130.0, 180.0, "chorus"),
    ]
    lines = [
        (10.0, 14.0, "walking down the street"),
        (50.0, 54.0, "we are the stars"),
        (100.0, 104.0, "second verse here"),
    ]
    for i in range(6):
        _song(corpus, f"s{i}", 180.0, 120.0, sections, lines)
    _song(corpus, "inst", 150.0, 90.0, sections, [], instrumental=True)
    out = tmp_path / "w.parquet"
    result = write_manifest(
        corpus, str(out), split="val=0.5", seed=3, window=WindowOptions(60, "downbeat")
    )
    rows = pq.read_table(out).to_pylist()
    assert result.rows == len(rows) > 7
    by_track: dict[str, list[dict]] = {}
    for r in rows:
        by_track.setdefault(r["track_id"], []).append(r)
        assert (
            r["duration_s"] <= 240
            and r["track_duration_s"] >= r["offset_s"] + r["duration_s"] - 1e-6
        )
        bar = 4 * 60.0 / (90.0 if r["track_id"] == "inst" else 120.0)
        assert ((r["offset_s"] - 0.5) / bar) == pytest.approx(
            round((r["offset_s"] - 0.5) / bar), abs=1e-3
        )  # on a downbeat
        assert r["window_id"] == f"{r['track_id']}:{r['window_index']}"
    for track, windows in by_track.items():
        assert len({w["split"] for w in windows}) == 1, track  # a track's windows share its split
    s0 = by_track["s0"]
    assert (
        "walking down the street" in s0[0]["lyrics_tagged"]
        and "we are the stars" in s0[0]["lyrics_tagged"]
    )
    assert (
        "second verse" not in s0[0]["lyrics_tagged"]
        and "second verse here" in s0[1]["lyrics_tagged"]
    )
    assert s0[-1]["lyrics_tagged"] == "[instrumental]" and s0[-1]["window_has_vocals"] is False
    assert all(w["lyrics_tagged"] == "[instrumental]" for w in by_track["inst"])
    assert all(w["bpm"] == pytest.approx(120, abs=0.5) for w in s0)
    meta = json.loads(open(result.sidecar).read())
    assert meta["window"]["length_s"] == 60 and meta["rows"] == len(rows)
    # reproduced from the sidecar: the same windows
    again = tmp_path / "again.parquet"
    reproduce_manifest(corpus, result.sidecar, str(again))
    assert pq.read_table(again).to_pylist() == rows
    # the CLI
    assert (
        main(
            [
                "manifest",
                "--corpus",
                corpus.root,
                "--out",
                str(tmp_path / "c.parquet"),
                "--window",
                "60",
                "--align",
                "section",
            ]
        )
        == 0
    )
    starts = {r["offset_s"] for r in pq.read_table(tmp_path / "c.parquet").to_pylist()}
    assert starts <= {0.0, 40.0, 80.0, 130.0}


def test_trainer_reads_windows_as_tracks(corpus, tmp_path):
    """A window row is cropped inside its window: offset_s + duration_s."""
    from conftest import tone, write_audio
    from songmill.train.data import load_crop

    sr = 44100
    audio = np.concatenate([tone(4.0, sr, amp=0.0), tone(4.0, sr, amp=0.5)])
    path = write_audio(tmp_path / "a.wav", audio, sr)
    row = ManifestRecord("a", path, 2.0, offset_s=5.0)
    crop = load_crop(row, 10.0, np.random.default_rng(0))
    assert (
        crop.shape == (2, 2 * sr) and np.abs(crop).max() > 0.3
    )  # from the loud half, not the silent start
    crop = load_crop(row._replace(offset_s=0.5), 10.0, np.random.default_rng(0))
    assert np.abs(crop).max() < 0.05


def test_feature_crops_stay_inside_a_window_with_its_lyrics(tmp_path):
    """The DiT's dataset crops a window row's cached features inside offset_s .. offset_s +
    duration_s, and keeps only the timed lyric lines sung in the crop (whatever lyric_crop says)."""
    import pyarrow as pa
    import torch
    from songmill.data_schema.manifest import read_manifest
    from songmill.data_schema.shards import FeatureShard
    from songmill.model.lyric_tokens import LyricTokenizer
    from songmill.train.data import LATENT_FPS, FeatureDataset, SampleKey
    from test_train_objective import write_feature_manifest

    lines = [
        {"start": 1.0, "end": 2.0, "text": "before the window"},
        {"start": 6.0, "end": 7.0, "text": "inside the window"},
        {"start": 13.0, "end": 14.0, "text": "after the window"},
    ]
    path = write_feature_manifest(
        tmp_path, [{"duration_s": 16.0, "lyrics": "x", "lyric_lines": lines}]
    )
    table = pq.read_table(path)
    table = table.set_column(
        table.schema.get_field_index("duration_s"), "duration_s", pa.array([6.0])
    )
    pq.write_table(table.append_column("offset_s", pa.array([4.0])), path)
    (row,) = read_manifest(path, require=("features_url",))
    assert row.offset_s == 4.0 and row.duration_s == 6.0
    full = FeatureShard.open(row.features_url).latent()
    tokenizer = LyricTokenizer.load("")
    for lyric_crop in ("full", "start"):
        dataset = FeatureDataset([row], max_crop_s=3.0, lyric_crop=lyric_crop)
        starts = set()
        for slot in range(12):
            item = dataset[SampleKey(0, 0, slot, 3)]
            n = item["latent"].shape[-1]
            start = next(
                s
                for s in range(full.shape[-1] - n + 1)
                if torch.equal(full[..., s : s + n], item["latent"])
            )
            assert int(4.0 * LATENT_FPS) <= start and start + n <= int(4.0 * LATENT_FPS) + int(
                np.ceil(6.0 * LATENT_FPS)
            )
            begin, end = start / LATENT_FPS, (start + n) / LATENT_FPS
            sung = [ln["text"] for ln in lines if begin <= 0.5 * (ln["start"] + ln["end"]) < end]
            assert item["lyrics"].tolist() == (
                tokenizer.encode_ids("\n".join(sung)) if sung else [0]
            )
            starts.add(start)
        assert len(starts) > 3
