"""`songmill models list|fetch`: where each stage's weights are looked for, present or missing,
and a clear message when there is no network."""

from __future__ import annotations

import json

import pytest
from songmill.annotate.weights import REGISTRY, locate
from songmill.flows.cli import main


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("SONGMILL_MODELS", str(tmp_path / "models"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import torch

    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    return tmp_path


def test_list_names_every_stage_and_where_it_looked(empty_caches, capsys):
    assert main(["models", "list", "--json", "--corpus", str(empty_caches / "c")]) == 0
    entries = {e["name"]: e for e in json.loads(capsys.readouterr().out)}
    assert set(entries) == set(REGISTRY)
    assert {e["stage"] for e in entries.values()} >= {
        "aesthetics",
        "separate",
        "transcribe",
        "caption",
        "structure",
        "features",
    }
    aes = entries["audiobox-aesthetics"]
    assert not aes["present"]
    assert str(empty_caches / "models" / "audiobox-aesthetics") in aes["looked"]
    assert any(str(empty_caches / "hf") in place for place in aes["looked"])
    # Entries a setting selects: the Omni weights only matter with caption.backend = qwen2.5-omni.
    assert entries["qwen2-audio-7b-instruct"]["in_use"] and not entries["qwen2.5-omni-7b"]["in_use"]
    assert not entries["structure-model"]["in_use"]


def test_a_copy_under_songmill_models_is_found_with_its_size(empty_caches, capsys):
    folder = empty_caches / "models" / "audiobox-aesthetics"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"\0" * 2048)
    where = locate(REGISTRY["audiobox-aesthetics"])
    assert where.present and where.path == str(folder) and where.size_bytes == 2050
    assert main(["models", "list", "--corpus", str(empty_caches / "c")]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("audiobox-aesthetics"))
    assert "present" in line and "2.0 KiB" in line
    # A setting that names a folder wins over $SONGMILL_MODELS.
    other = empty_caches / "elsewhere"
    other.mkdir()
    assert locate(REGISTRY["audiobox-aesthetics"], str(other)).looked[0] == str(other)


def test_a_model_set_in_the_config_is_looked_for_there(empty_caches, capsys):
    where = str(empty_caches / "mine")
    assert (
        main(
            [
                "models",
                "list",
                "--json",
                "--corpus",
                str(empty_caches / "c"),
                "--set",
                f"aesthetics.model={where}",
            ]
        )
        == 0
    )
    entries = {e["name"]: e for e in json.loads(capsys.readouterr().out)}
    assert entries["audiobox-aesthetics"]["looked"][0] == where


def test_fetch_offline_says_so_in_one_line(empty_caches, capsys):
    assert (
        main(["models", "fetch", "audiobox-aesthetics", "--corpus", str(empty_caches / "c")]) == 1
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        "error: cannot download audiobox-aesthetics: no network"
    )


def test_fetch_unknown_name_and_path_only_entries(empty_caches, capsys):
    assert main(["models", "fetch", "nope", "--corpus", str(empty_caches / "c")]) == 2
    # several names: an unknown one is refused before any is fetched
    assert (
        main(
            ["models", "fetch", "audiobox-aesthetics", "nope", "--corpus", str(empty_caches / "c")]
        )
        == 2
    )
    assert "unknown weights" in capsys.readouterr().err
    assert main(["models", "fetch", "structure-model", "--corpus", str(empty_caches / "c")]) == 1
    assert "no public download" in capsys.readouterr().err
