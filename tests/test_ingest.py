"""Ingest: formats, the bad-input set, duplicates, incremental runs, fsspec sources."""

from __future__ import annotations

import os
import struct

import fsspec
import numpy as np
import pytest
import soundfile as sf
from conftest import rows, tone, write_audio
from songmill.annotate.ingest import IngestConfig, discover, ingest

FORMATS = [
    ("a.wav", {}),
    ("b.flac", {}),
    ("c.mp3", {"format": "MP3"}),
    ("d.ogg", {"format": "OGG", "subtype": "VORBIS"}),
    ("e.opus", {"format": "OGG", "subtype": "OPUS"}),
]


def test_every_format_becomes_a_track_with_probed_parameters(tmp_path, corpus):
    for i, (name, kwargs) in enumerate(FORMATS):
        sr = 48000 if name.endswith(".opus") else 44100
        write_audio(tmp_path / "src" / name, tone(3.0, sr=sr, seed=i), sr, **kwargs)
    summary = ingest(corpus, [str(tmp_path / "src")])
    assert summary.new_tracks == len(FORMATS) and summary.errors == 0
    found = rows(
        corpus, "SELECT uri, duration_s, sample_rate, channels, codec FROM tracks ORDER BY uri"
    )
    assert len(found) == len(FORMATS)
    for uri, duration, sr, channels, codec in found:
        assert channels == 2
        assert sr in (44100, 48000)
        assert duration == pytest.approx(3.0, abs=0.1), uri
        assert codec


def _bad_input_set(root) -> dict[str, str]:
    """name -> expectation: 'track' or 'error'."""
    os.makedirs(root, exist_ok=True)
    good = tone(2.0, seed=1)
    mp3 = write_audio(root / "full.mp3", good, format="MP3")
    data = open(mp3, "rb").read()
    os.remove(mp3)
    (root / "truncated.mp3").write_bytes(data[: len(data) // 3])
    (root / "zero.wav").write_bytes(b"")
    (root / "text.wav").write_text("this is not audio, just text renamed to .wav\n" * 20)
    lying = write_audio(root / "lying_header.wav", tone(1.0, seed=2), subtype="PCM_16")
    raw = bytearray(open(lying, "rb").read())
    data_at = raw.index(b"data")
    raw[data_at + 4 : data_at + 8] = struct.pack(
        "<I", 10_000_000
    )  # claims far more data than there is
    raw[4:8] = struct.pack("<I", 10_000_036)
    open(lying, "wb").write(bytes(raw))
    write_audio(root / "one_sample.wav", np.zeros((1, 1), np.float32))
    write_audio(root / "nan.wav", np.full((4410, 2), np.nan, np.float32), subtype="FLOAT")
    write_audio(root / "eight_channels.wav", tone(1.0, channels=8, seed=3))
    write_audio(root / "rate_8k.wav", tone(1.0, sr=8000, seed=4), 8000)
    write_audio(root / "rate_192k.flac", tone(1.0, sr=192000, seed=5), 192000)
    write_audio(root / "Björk — 歌 ünïcödé.flac", tone(1.0, seed=6))
    return {
        "truncated.mp3": "any",
        "zero.wav": "error",
        "text.wav": "error",
        "lying_header.wav": "any",
        "one_sample.wav": "any",
        "nan.wav": "any",
        "eight_channels.wav": "track",
        "rate_8k.wav": "track",
        "rate_192k.flac": "track",
        "Björk — 歌 ünïcödé.flac": "track",
    }


@pytest.mark.parametrize("verify", ["header", "decode"])
def test_bad_input_set_every_file_ends_as_track_or_error(tmp_path, corpus, verify):
    expected = _bad_input_set(tmp_path / "bad")
    summary = ingest(corpus, [str(tmp_path / "bad")], IngestConfig(verify=verify))
    tracks = {os.path.basename(u): n for u, n in rows(corpus, "SELECT uri, channels FROM tracks")}
    errors = {
        os.path.basename(u): (s, t, m)
        for u, s, t, m in rows(corpus, "SELECT uri, stage, error_type, message FROM errors")
    }
    assert set(tracks) | set(errors) == set(expected)
    assert not set(tracks) & set(errors)
    for name, outcome in expected.items():
        if outcome == "track":
            assert name in tracks, (name, errors.get(name))
        elif outcome == "error":
            assert name in errors
            assert errors[name][0] == "ingest" and errors[name][2]
    assert tracks["eight_channels.wav"] == 8
    assert "zero" in errors["zero.wav"][2] or "empty" in errors["zero.wav"][2]
    if verify == "decode":  # a full decode catches what a header probe cannot
        assert "nan.wav" in errors and "non-finite" in errors["nan.wav"][2]
    assert summary.new_tracks + summary.errors == len(expected)


def test_second_run_over_unchanged_source_reads_nothing(tmp_path, corpus, monkeypatch):
    for i in range(3):
        write_audio(tmp_path / "src" / f"t{i}.flac", tone(1.0, seed=i))
    (tmp_path / "src" / "broken.wav").write_bytes(b"RIFF")
    first = ingest(corpus, [str(tmp_path / "src")])
    assert (first.new_tracks, first.errors) == (3, 1)
    before = {t: len(corpus.part_files(t)) for t in ("tracks", "sources", "errors")}

    opened = []
    real_open = fsspec.open
    monkeypatch.setattr(
        "songmill.annotate.ingest.fsspec.open",
        lambda *a, **k: opened.append(a) or real_open(*a, **k),
    )
    second = ingest(corpus, [str(tmp_path / "src")])
    assert (second.unchanged, second.new_tracks, second.errors) == (4, 0, 0)
    assert opened == []  # not read, not hashed
    assert {t: len(corpus.part_files(t)) for t in before} == before

    # a changed file (new size / mtime) is read again: new content -> a new track
    write_audio(tmp_path / "src" / "t0.flac", tone(1.5, seed=42))
    third = ingest(corpus, [str(tmp_path / "src")])
    assert third.new_tracks == 1 and third.unchanged == 3
    assert rows(corpus, "SELECT count(*) FROM tracks")[0][0] == 4
    assert rows(corpus, "SELECT count(*) FROM sources")[0][0] == 4


def test_same_bytes_under_two_paths_is_one_track_with_both_uris(tmp_path, corpus):
    a = write_audio(tmp_path / "x" / "song.wav", tone(1.0, seed=7))
    b = tmp_path / "y" / "copy of song.wav"
    b.parent.mkdir()
    b.write_bytes(open(a, "rb").read())
    summary = ingest(corpus, [str(tmp_path / "x"), str(b)])
    assert (summary.new_tracks, summary.new_uris) == (1, 1)
    found = rows(corpus, "SELECT track_id, uris FROM tracks")
    assert len(found) == 1
    assert sorted(found[0][1]) == sorted([a, str(b)])
    import hashlib

    assert found[0][0] == hashlib.sha256(open(a, "rb").read()).hexdigest()


def test_fsspec_memory_source_and_globs(tmp_path, corpus):
    fs = fsspec.filesystem("memory")
    for i in range(2):
        path = tmp_path / f"m{i}.flac"
        write_audio(path, tone(1.0, seed=10 + i))
        fs.pipe(f"/bucket/set/m{i}.flac", path.read_bytes())
    fs.pipe("/bucket/set/notes.txt", b"not audio, skipped in directory walks")
    summary = ingest(corpus, ["memory://bucket/set"])
    assert summary.new_tracks == 2 and summary.errors == 0
    uris = [r[0] for r in rows(corpus, "SELECT uri FROM tracks ORDER BY uri")]
    assert uris == [fs.unstrip_protocol(f"/bucket/set/m{i}.flac") for i in range(2)]
    assert all(uri.startswith("memory://") for uri in uris)

    for i in range(3):
        write_audio(tmp_path / "g" / f"take{i}.wav", tone(0.5, seed=20 + i))
    files, missing = discover([str(tmp_path / "g" / "take[01].wav"), str(tmp_path / "nope")])
    assert [os.path.basename(f.uri) for f in files] == ["take0.wav", "take1.wav"]
    assert missing == [str(tmp_path / "nope")]


def test_decoded_track_audio_matches_what_was_written(tmp_path, corpus):
    from songmill.annotate.base import Track

    data = tone(1.0, sr=22050, seed=3)
    path = write_audio(tmp_path / "s.flac", data, 22050, subtype="PCM_24")
    ingest(corpus, [path])
    (row,) = corpus.sql("SELECT * FROM tracks").to_pylist()
    assert row["bit_depth"] == 24 and row["sample_rate"] == 22050
    audio, sr = Track(row).audio()
    assert sr == 22050 and audio.shape == data.shape
    np.testing.assert_allclose(audio, data, atol=1e-4)
    mono, sr16 = Track(row).audio(16000, mono=True)
    assert sr16 == 16000 and mono.ndim == 1 and abs(mono.size - 16000) <= 1
    assert sf.info(path).frames == data.shape[0]
