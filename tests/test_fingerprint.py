"""Near-duplicate audio: the fingerprint stage (real Chromaprint) groups one recording across
re-encodes, resampling, gain, down-mix and trims; different songs in the same tempo, key and
style stay apart; the manifest carries `dup_cluster` and a split never cuts a cluster."""

from __future__ import annotations

import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from conftest import rows
from songmill.annotate import fingerprint as fingerprint_module
from songmill.annotate.audio import resample
from songmill.annotate.fingerprint import (
    FingerprintConfig,
    FingerprintStage,
    cluster,
    index_keys,
    update_index,
    write_index,
)
from songmill.annotate.ingest import ingest
from songmill.annotate.runner import run_stages
from songmill.data_schema.manifest import write_manifest
from songmill.testaudio.synth import render_track

SR = 44100


def _write(path, audio, sr=SR, **kwargs):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sf.write(path, audio, sr, **kwargs)
    return path


def _copies(folder, name, audio, n=6):
    """The original (lossless) and up to n-1 transformed copies; returns their paths."""
    makers = [
        lambda: _write(f"{folder}/{name}.wav", audio),
        lambda: _write(
            f"{folder}/{name}-128k.mp3",
            audio,
            format="MP3",
            subtype="MPEG_LAYER_III",
            compression_level=0.6,
            bitrate_mode="CONSTANT",
        ),
        lambda: _write(
            f"{folder}/{name}.opus", resample(audio, SR, 48000), 48000, format="OGG", subtype="OPUS"
        ),
        lambda: _write(
            f"{folder}/{name}-22k-mono.flac", resample(audio.mean(axis=1), SR, 22050), 22050
        ),
        lambda: _write(f"{folder}/{name}-quiet.ogg", audio * 0.35, format="OGG", subtype="VORBIS"),
        lambda: _write(f"{folder}/{name}-trimmed.wav", audio[int(4.0 * SR) : -int(3.0 * SR)]),
    ]
    return [make() for make in makers[:n]]


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("library"))
    # Two "songs by one artist": same style, tempo and key, different seeds; and one other.
    a = render_track(110, "A", "minor", 26.0, seed=1, style="pop")
    b = render_track(110, "A", "minor", 26.0, seed=2, style="pop")
    c = render_track(128, "D", "major", 26.0, seed=3, style="edm")
    families = {
        "a": _copies(folder, "a", a),
        "b": _copies(folder, "b", b, n=3),
        "c": [_write(f"{folder}/c.flac", c)],
    }
    return folder, families


@pytest.fixture(scope="module")
def indexed(library, tmp_path_factory):
    from songmill.data_schema.store import Corpus

    folder, families = library
    corpus = Corpus(str(tmp_path_factory.mktemp("fp") / "corpus"))
    ingest(corpus, [folder])
    (summary,) = run_stages(corpus, [FingerprintStage()])
    assert summary.n_error == 0 and summary.n_ok == sum(len(f) for f in families.values())
    return corpus, families


def _family_of(families):
    return {os.path.abspath(p): name for name, paths in families.items() for p in paths}


def test_copies_group_and_different_songs_do_not(indexed):
    corpus, families = indexed
    family = _family_of(families)
    got = rows(
        corpus,
        "SELECT t.uri, d.cluster_id, d.canonical_track_id, d.similarity FROM near_duplicates d JOIN tracks t USING (track_id)",
    )
    clusters: dict[str, set[str]] = {}
    for uri, cluster_id, _, _ in got:
        clusters.setdefault(cluster_id, set()).add(family[uri])
    assert sorted(len(v) for v in clusters.values()) == [1, 1]  # no cluster mixes songs
    grouped = {os.path.basename(r[0]) for r in got}
    assert grouped == {
        os.path.basename(p) for p in families["a"] + families["b"]
    }  # recall: every copy
    for uri, _, canonical, similarity in got:
        canon_uri = rows(corpus, f"SELECT uri FROM tracks WHERE track_id = '{canonical}'")[0][0]
        assert canon_uri.endswith((f"/{family[uri]}.wav",))  # the lossless original is kept
        assert FingerprintConfig().threshold <= similarity <= 1.0
    manifest = dict(rows(corpus, "SELECT uri, dup_cluster FROM manifest"))
    assert manifest[os.path.abspath(families["c"][0])] is None
    assert len({manifest[os.path.abspath(p)] for p in families["a"]}) == 1


def test_split_never_cuts_a_cluster(indexed, tmp_path):
    corpus, families = indexed
    family = _family_of(families)
    sides_seen = set()
    for seed in range(8):
        out = tmp_path / f"m{seed}.parquet"
        result = write_manifest(corpus, str(out), split="val=0.3", seed=seed)
        table = pq.read_table(out, columns=["uri", "split"]).to_pylist()
        assert result.rows == len(table) == len(family)
        by_family: dict[str, set[str]] = {}
        for r in table:
            by_family.setdefault(family[r["uri"]], set()).add(r["split"])
        assert all(len(s) == 1 for s in by_family.values()), by_family
        sides_seen |= {next(iter(s)) for s in by_family.values()}
    assert sides_seen == {"train", "val"}  # the split does move with the seed


def test_unrelated_random_fingerprints_never_cluster_and_planted_copies_do():
    rng = np.random.default_rng(0)
    prints = [rng.integers(0, 2**32, 900, dtype=np.uint64).astype(np.uint32) for _ in range(300)]
    ids = [f"t{i:04d}" for i in range(len(prints))]
    for i in range(20):  # copies: 8 % of bits flipped, shifted by up to 5 s
        flips = (rng.random((900, 32)) < 0.08) @ (1 << np.arange(32, dtype=np.uint64))
        shift = int(rng.integers(0, 40))
        prints.append((prints[i] ^ flips.astype(np.uint32))[shift:])
        ids.append(f"copy-of-{i:04d}")
    found = cluster(ids, prints, FingerprintConfig())
    groups: dict[int, list[str]] = {}
    for tid, root in zip(ids, found.cluster.tolist(), strict=True):
        groups.setdefault(root, []).append(tid)
    dup_groups = sorted(sorted(g) for g in groups.values() if len(g) > 1)
    assert dup_groups == sorted(sorted([f"t{i:04d}", f"copy-of-{i:04d}"]) for i in range(20))


def test_index_rebuild_is_idempotent(indexed):
    corpus, _ = indexed
    before = rows(corpus, "SELECT track_id, cluster_id FROM near_duplicates ORDER BY 1")
    write_index(corpus)
    assert rows(corpus, "SELECT track_id, cluster_id FROM near_duplicates ORDER BY 1") == before
    assert (
        rows(corpus, "SELECT count(DISTINCT index_id) FROM dup_clusters")[0][0] >= 2
    )  # history kept


def test_a_build_that_finds_no_clusters_hides_the_earlier_ones(indexed):
    corpus, _ = indexed
    assert rows(corpus, "SELECT count(*) FROM near_duplicates")[0][0] > 0
    update_index(corpus, FingerprintConfig(threshold=1.01), full=True)  # nothing can match now
    assert rows(corpus, "SELECT count(*) FROM near_duplicates")[0][0] == 0
    assert rows(corpus, "SELECT count(*) FROM manifest WHERE dup_cluster IS NOT NULL")[0][0] == 0
    update_index(corpus)  # the settings changed back: a full rebuild on its own
    assert rows(corpus, "SELECT count(*) FROM near_duplicates")[0][0] > 0
    assert (
        rows(corpus, "SELECT mode FROM dup_index_builds ORDER BY index_id DESC LIMIT 1")[0][0]
        == "full"
    )


def test_new_fingerprints_join_the_clusters_without_reading_every_fingerprint(
    library, tmp_path, monkeypatch
):
    from songmill.data_schema.store import Corpus

    folder, families = library
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    later = {families["a"][1], families["a"][4], families["b"][2]}  # two copies of a, one of b
    for path in sum(families.values(), []):
        os.symlink(path, (second if path in later else first) / os.path.basename(path))
    corpus = Corpus(str(tmp_path / "corpus"))
    ingest(corpus, [str(first)])
    run_stages(corpus, [FingerprintStage()])
    read: list[list[str] | None] = []
    real_prints_of = fingerprint_module._prints_of

    def recording_prints_of(corpus, track_ids, algorithm):
        read.append(None if track_ids is None else list(track_ids))
        return real_prints_of(corpus, track_ids, algorithm)

    monkeypatch.setattr(fingerprint_module, "_prints_of", recording_prints_of)
    ingest(corpus, [str(second)])
    run_stages(corpus, [FingerprintStage()])  # after_run: an incremental build
    assert rows(
        corpus, "SELECT mode, new_fingerprints FROM dup_index_builds ORDER BY index_id DESC LIMIT 1"
    )[0] == ("incremental", 3)
    assert None not in read  # never every fingerprint
    c_id = rows(
        corpus,
        f"SELECT track_id FROM tracks WHERE uri LIKE '%{os.path.basename(families['c'][0])}'",
    )[0][0]
    assert all(c_id not in ids for ids in read)  # the unrelated song's fingerprint was not read
    incremental = rows(
        corpus, "SELECT track_id, cluster_id, canonical_track_id FROM near_duplicates ORDER BY 1"
    )
    assert len(incremental) == len(families["a"]) + len(families["b"])
    write_index(corpus)  # the full rebuild agrees
    assert (
        rows(
            corpus,
            "SELECT track_id, cluster_id, canonical_track_id FROM near_duplicates ORDER BY 1",
        )
        == incremental
    )


def test_index_keys_do_not_depend_on_a_bit_pattern_a_track_may_lack():
    rng = np.random.default_rng(3)
    values = rng.integers(0, 2**32, 800, dtype=np.uint64).astype(np.uint32) | np.uint32(
        0x300
    )  # bits 8-9 always set
    keys, positions = index_keys(values, FingerprintConfig())
    assert 120 < keys.size < 280  # about 1/4 of the frames, like any other track
    copy = values[37:]
    copy_keys, copy_positions = index_keys(copy, FingerprintConfig())
    assert set(copy_keys.tolist()) <= set(keys.tolist())  # a trimmed copy keeps the same keys
    assert np.array_equal(copy_positions + 37, positions[positions >= 37])


def test_dedup_command_updates_and_rebuilds(indexed, capsys):
    from songmill.flows.cli import main

    corpus, _ = indexed
    before = rows(corpus, "SELECT track_id, cluster_id FROM near_duplicates ORDER BY 1")
    assert main(["dedup", "--corpus", corpus.root]) == 0
    assert capsys.readouterr().out.startswith(
        "incremental index build"
    )  # nothing new: clusters carried over
    assert main(["dedup", "--full", "--corpus", corpus.root]) == 0
    assert capsys.readouterr().out.startswith("full index build")
    assert rows(corpus, "SELECT track_id, cluster_id FROM near_duplicates ORDER BY 1") == before
