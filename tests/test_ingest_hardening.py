"""A real library is hostile: broken symlinks, symlink loops, a directory named `x.wav`, pipes,
unreadable files, audio without an extension and non-audio files. Each problem is one `errors`
row, non-audio files are `sources` rows marked skipped with the reason, and the run goes on."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

import pytest
from conftest import rows, tone, write_audio
from songmill.annotate.ingest import ingest, sniff_audio


@pytest.fixture
def hostile(tmp_path):
    src = tmp_path / "library"
    good = [write_audio(src / "a" / f"good{i}.wav", tone(0.3, seed=i)) for i in range(2)]
    write_audio(src / "a" / "noext_flac", tone(0.3, seed=7), format="FLAC")  # audio, no extension
    write_audio(src / "a" / "odd.bin", tone(0.3, seed=8), format="WAV")  # audio, unknown extension
    (src / "a" / "notes.txt").write_text("liner notes")  # not audio
    (src / "a" / "README").write_bytes(b"just text, no extension")
    os.symlink(src / "nowhere.wav", src / "a" / "dangling.wav")  # broken symlink
    os.symlink(src / "a", src / "a" / "loop")  # a directory symlink back to its parent
    os.symlink(src / "a" / "ping.wav", src / "a" / "pong.wav")  # a file symlink loop
    os.symlink(src / "a" / "pong.wav", src / "a" / "ping.wav")
    (src / "a" / "album.wav").mkdir()  # a directory named like audio (with audio inside)
    write_audio(src / "a" / "album.wav" / "inside.wav", tone(0.3, seed=9))
    os.mkfifo(src / "a" / "pipe.wav")  # reading it would block forever
    return src, good


def test_hostile_folder_one_error_row_each_and_the_run_goes_on(hostile, corpus):
    src, _ = hostile
    summary = ingest(corpus, [str(src)])
    errors = {
        os.path.basename(r[0]): r[1]
        for r in rows(corpus, "SELECT uri, error_type FROM errors WHERE stage = 'ingest'")
    }
    assert errors == {
        "dangling.wav": "BrokenSymlink",
        "loop": "SymlinkLoop",
        "ping.wav": "SymlinkLoop",
        "pong.wav": "SymlinkLoop",
        "album.wav": "IsADirectoryError",
        "pipe.wav": "NotARegularFile",
    }
    ingested = {os.path.basename(r[0]) for r in rows(corpus, "SELECT uri FROM tracks")}
    assert ingested == {"good0.wav", "good1.wav", "noext_flac", "odd.bin", "inside.wav"}
    skipped = {
        os.path.basename(r[0]): r[1]
        for r in rows(corpus, "SELECT uri, reason FROM sources WHERE status = 'skipped'")
    }
    assert set(skipped) == {"notes.txt", "README"}
    assert "'.txt' is not audio" in skipped["notes.txt"] and "no extension" in skipped["README"]
    assert summary.new_tracks == 5 and summary.skipped == 2 and summary.errors == 6

    again = ingest(corpus, [str(src)])  # incremental: nothing new, skipped files not re-recorded
    assert again.new_tracks == 0 and again.skipped == 0
    assert rows(corpus, "SELECT count(*) FROM sources WHERE status = 'skipped'") == [(2,)]
    assert rows(corpus, "SELECT count(*) FROM errors WHERE stage = 'ingest'") == [
        (6,)
    ]  # one row each


def test_broken_symlink_named_as_the_source_is_an_error_not_a_crash(tmp_path, corpus):
    os.symlink(tmp_path / "gone.wav", tmp_path / "link.wav")
    summary = ingest(corpus, [str(tmp_path / "link.wav")])
    assert summary.errors == 1 and not summary.missing_sources
    assert rows(corpus, "SELECT error_type FROM errors") == [("BrokenSymlink",)]


UNREADABLE = textwrap.dedent(
    """
    import os, sys
    from songmill.data_schema.store import Corpus
    from songmill.annotate.ingest import ingest
    # One ingest as the starting user first: every lazy import happens while the interpreter's
    # own files are readable (here they are not readable by nobody).
    ingest(Corpus(sys.argv[3]), [os.path.join(sys.argv[2], "ok.wav")])
    if os.geteuid() == 0:  # root reads everything: drop to nobody, as a real library's user
        os.setgid(65534); os.setuid(65534)
    s = ingest(Corpus(sys.argv[1]), [sys.argv[2]])
    print(s.new_tracks, s.errors)
    """
)


def test_unreadable_file_is_an_error_row(tmp_path):
    base = tempfile.mkdtemp(prefix="songmill-perm-", dir="/tmp")
    try:
        os.chmod(base, 0o777)
        src = os.path.join(base, "src")
        write_audio(os.path.join(src, "ok.wav"), tone(0.3, seed=1))
        locked = write_audio(os.path.join(src, "locked.wav"), tone(0.3, seed=2))
        os.chmod(src, 0o755)
        os.chmod(os.path.join(src, "ok.wav"), 0o644)
        os.chmod(locked, 0o000)
        root = os.path.join(base, "corpus")
        os.mkdir(root)
        os.chmod(root, 0o777)
        env = dict(os.environ, HOME=base)
        out = subprocess.run(
            [sys.executable, "-c", UNREADABLE, root, src, os.path.join(base, "warmup")],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["1", "1"]
        from songmill.data_schema.store import Corpus

        (err,) = rows(Corpus(root), "SELECT uri, error_type FROM errors")
        assert err == (locked, "PermissionError")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_sniffing_knows_audio_containers_and_nothing_else(tmp_path):
    for fmt, name in (("WAV", "wav"), ("FLAC", "flac"), ("OGG", "ogg"), ("AIFF", "aiff")):
        path = write_audio(tmp_path / f"x.{name}", tone(0.2), format=fmt)
        assert sniff_audio(open(path, "rb").read(16)) is not None, fmt
    assert sniff_audio(b"%PDF-1.7 whatever") is None
    assert sniff_audio(b"\x89PNG\r\n\x1a\n....") is None
    assert sniff_audio(b"") is None
