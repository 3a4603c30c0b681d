"""Reproducible manifests: what an export was cut from is in its Parquet metadata and sidecar,
and `--reproduce` writes the same rows after the corpus moved on (new rows, reprocessing,
compaction); a corpus that lost rows is refused with a reason."""

from __future__ import annotations

import json
import os

import pyarrow.parquet as pq
import pytest
from songmill.data_schema.manifest import ManifestError, reproduce_manifest, write_manifest
from songmill.data_schema.store import utcnow
from songmill.flows.cli import main


def _write(corpus, ids, bpm):
    corpus.write(
        "tracks",
        [dict(track_id=t, uri=f"/m/{t}.wav", duration_s=60.0, created_at=utcnow()) for t in ids],
    )
    corpus.write(
        "music",
        [
            dict(
                track_id=t,
                stage_version=1,
                config_hash="m",
                run_id="r",
                created_at=utcnow(),
                bpm=bpm,
                keyscale="C major",
            )
            for t in ids
        ],
    )


def test_reproduce_writes_the_same_rows_after_the_corpus_moved_on(corpus, tmp_path):
    _write(corpus, [f"t{i}" for i in range(10)], 90.0)
    first = tmp_path / "first.parquet"
    result = write_manifest(corpus, str(first), where="bpm < 100", split="val=0.3", seed=7)
    meta = json.loads(pq.read_metadata(first).metadata[b"songmill.manifest"])
    sidecar = json.loads(open(result.sidecar).read())
    assert meta["sql"] == sidecar["sql"] and "bpm < 100" in meta["sql"] and meta["seed"] == 7
    assert sidecar["rows"] == 10 and sum(sidecar["splits"].values()) == 10
    assert (
        set(sidecar["corpus_state"]["tables"]) >= {"tracks", "music"}
        and sidecar["songmill_version"]
    )

    _write(corpus, [f"n{i}" for i in range(5)], 80.0)  # new tracks that match the filter
    _write(corpus, ["t1", "t2"], 150.0)  # reprocessed: no longer match
    corpus.compact("music")
    corpus.compact("tracks")
    assert write_manifest(corpus, str(tmp_path / "now.parquet"), where="bpm < 100").rows == 13

    again = tmp_path / "again.parquet"
    assert reproduce_manifest(corpus, result.sidecar, str(again)).rows == 10
    assert pq.read_table(again).to_pylist() == pq.read_table(first).to_pylist()
    assert (
        main(
            [
                "manifest",
                "--reproduce",
                result.sidecar,
                "--out",
                str(tmp_path / "cli.parquet"),
                "--corpus",
                corpus.root,
            ]
        )
        == 0
    )
    assert (
        pq.read_table(tmp_path / "cli.parquet").column("track_id").to_pylist()
        == pq.read_table(first).column("track_id").to_pylist()
    )


def test_reproduce_refuses_when_rows_it_was_cut_from_are_gone(corpus, tmp_path):
    _write(corpus, ["a", "b"], 90.0)
    result = write_manifest(corpus, str(tmp_path / "m.parquet"))
    for part in corpus.part_files("music"):
        os.remove(part)
    with pytest.raises(ManifestError, match="cannot reproduce"):
        reproduce_manifest(corpus, result.sidecar, str(tmp_path / "r.parquet"))
    assert not os.path.exists(tmp_path / "r.parquet")


def test_split_shares_are_checked(corpus, tmp_path):
    _write(corpus, ["a"], 90.0)
    for bad in ("val=1.5", "val", "train=0.1", "val=0.6,test=0.5"):
        with pytest.raises(ManifestError):
            write_manifest(corpus, str(tmp_path / "m.parquet"), split=bad)


def test_export_leaves_out_the_beat_lists_unless_asked(corpus, tmp_path):
    corpus.write(
        "tracks",
        [dict(track_id=t, uri=f"/m/{t}.wav", duration_s=60.0, created_at=utcnow()) for t in "ab"],
    )
    corpus.write(
        "music",
        [
            dict(
                track_id=t,
                stage_version=1,
                config_hash="m",
                run_id="r",
                created_at=utcnow(),
                bpm=90.0,
                beats=[0.5, 1.0],
                downbeats=[0.5],
            )
            for t in "ab"
        ],
    )
    default = tmp_path / "default.parquet"
    write_manifest(corpus, str(default), where="len(beats) = 2")  # the filter may still use them
    names = pq.read_schema(default).names
    assert (
        "bpm" in names
        and "dup_cluster" in names
        and "beats" not in names
        and "downbeats" not in names
    )
    every = tmp_path / "all.parquet"
    write_manifest(corpus, str(every), columns="all")
    assert pq.read_table(every).column("beats").to_pylist() == [[0.5, 1.0], [0.5, 1.0]]
    chosen = tmp_path / "chosen.parquet"
    result = write_manifest(corpus, str(chosen), split="val=0.5", seed=1, columns="bpm, beats")
    assert pq.read_schema(chosen).names == ["track_id", "bpm", "beats", "split"]
    again = tmp_path / "again.parquet"
    reproduce_manifest(corpus, result.sidecar, str(again))  # the sidecar's SQL names the columns
    assert pq.read_table(again).to_pylist() == pq.read_table(chosen).to_pylist()
    with pytest.raises(ManifestError, match="no column 'nope'"):
        write_manifest(corpus, str(tmp_path / "x.parquet"), columns="bpm,nope")
    assert (
        main(
            [
                "manifest",
                "--columns",
                "keyscale",
                "--out",
                str(tmp_path / "cli.parquet"),
                "--corpus",
                corpus.root,
            ]
        )
        == 0
    )
    assert pq.read_schema(tmp_path / "cli.parquet").names == ["track_id", "keyscale"]


def test_reproduce_that_does_not_match_leaves_what_was_at_out(corpus, tmp_path, capsys):
    """A failed digest check removes only songmill's own temporary file: the file at --out (here an
    earlier manifest) is byte for byte what it was, and nothing is left beside it."""
    _write(corpus, ["a", "b", "c"], 90.0)
    result = write_manifest(corpus, str(tmp_path / "m.parquet"))
    kept = tmp_path / "kept.parquet"
    write_manifest(corpus, str(kept), where="track_id = 'a'")
    before = kept.read_bytes()
    meta = json.loads(open(result.sidecar).read())
    meta["track_ids_sha256"] = "0" * 64  # the recorded rows no longer match what the corpus gives
    with open(result.sidecar, "w") as f:
        json.dump(meta, f)
    with pytest.raises(ManifestError, match="rows differ"):
        reproduce_manifest(corpus, result.sidecar, str(kept))
    assert kept.read_bytes() == before
    assert (
        main(
            ["manifest", "--reproduce", result.sidecar, "--out", str(kept), "--corpus", corpus.root]
        )
        != 0
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "differ" in err
    assert kept.read_bytes() == before
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]


def test_manifest_out_refuses_what_songmill_did_not_write(corpus, tmp_path, capsys):
    _write(corpus, ["a", "b"], 90.0)
    folder = tmp_path / "folder.parquet"
    folder.mkdir()
    (folder / "mine.txt").write_text("keep")
    notes = tmp_path / "notes.parquet"
    notes.write_text("my notes")
    foreign = tmp_path / "foreign.parquet"
    pq.write_table(
        pq.read_table(
            write_manifest(corpus, str(tmp_path / "src.parquet")).out
        ).replace_schema_metadata({}),
        foreign,
    )
    foreign_bytes = foreign.read_bytes()
    sidecar_owner = tmp_path / "fresh.parquet"
    (tmp_path / "fresh.parquet.json").write_text('{"mine": 1}')
    source = write_manifest(corpus, str(tmp_path / "m.parquet")).sidecar
    for out in (folder, notes, foreign, sidecar_owner):
        with pytest.raises(ManifestError, match="refusing to overwrite"):
            write_manifest(corpus, str(out))
        with pytest.raises(ManifestError, match="refusing to overwrite"):
            reproduce_manifest(corpus, source, str(out))
        assert main(["manifest", "--out", str(out), "--corpus", corpus.root]) != 0
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert (folder / "mine.txt").read_text() == "keep" and notes.read_text() == "my notes"
    assert (
        foreign.read_bytes() == foreign_bytes
        and (tmp_path / "fresh.parquet.json").read_text() == '{"mine": 1}'
    )
    assert not sidecar_owner.exists()
    # songmill's own earlier manifest (and sidecar) are replaced as before
    again = write_manifest(corpus, str(tmp_path / "m.parquet"), where="track_id = 'a'")
    assert again.rows == 1 and json.loads(open(again.sidecar).read())["rows"] == 1
