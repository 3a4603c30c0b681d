"""The trainer as a new user meets it on the command line: a resume that extends the run,
a manifest without features, LoRA + FSDP, one-line errors."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from songmill.flows.cli import main
from songmill.train.checkpoint import load_checkpoint
from songmill.train.config import TrainConfig
from songmill.train.loop import lr_factor
from songmill.train.prepare import synthetic_manifest

QUIET = [
    "--set",
    "train.progress=false",
    "--set",
    "train.val_every=0",
    "--set",
    "train.ckpt_every=0",
    "--set",
    "train.max_crop_s=1.0",
    "--batch-size",
    "2",
]


@pytest.fixture(scope="module")
def audio_manifest(tmp_path_factory) -> str:
    return synthetic_manifest(str(tmp_path_factory.mktemp("audio")), n_tracks=2, duration_s=1.0)


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_resume_with_a_larger_max_steps_extends_the_run(audio_manifest, tmp_path, capsys):
    run = str(tmp_path / "dcae")
    assert (
        main(
            [
                "train",
                "dcae",
                "--manifest",
                audio_manifest,
                "--run-dir",
                run,
                "--max-steps",
                "6",
                *QUIET,
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert (
        main(
            [
                "train",
                "dcae",
                "--manifest",
                audio_manifest,
                "--resume",
                run,
                "--max-steps",
                "8",
                *QUIET,
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "extending the run: max_steps 6 -> 8" in out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["step"] == 8
    ckpt = load_checkpoint(run)
    assert ckpt.step == 8 and ckpt.trainer["config"]["max_steps"] == 8
    # the schedule is the 8-step one: its LR after step 8 is lr * factor(8) of an 8-step run
    cfg = TrainConfig(kind="dcae", max_steps=8)
    assert ckpt.state["scheduler"]["_last_lr"][0] == pytest.approx(cfg.lr * lr_factor(8, cfg))
    # other changes are still refused, in one line, unless forced
    code = main(
        [
            "train",
            "dcae",
            "--manifest",
            audio_manifest,
            "--resume",
            run,
            "--max-steps",
            "9",
            "--lr",
            "3e-4",
            *QUIET,
        ]
    )
    assert code != 0
    line = _one_error_line(capsys.readouterr().err)
    assert "lr: 0.0001 -> 0.0003" in line and "--force" in line
    # resuming a finished run says what to do
    assert main(["train", "dcae", "--manifest", audio_manifest, "--resume", run, *QUIET]) != 0
    assert "larger --max-steps" in _one_error_line(capsys.readouterr().err)


def _featureless(audio_manifest: str, tmp_path) -> str:
    """What `songmill manifest` exports before the features stage ran: features_url all null."""
    table = pq.read_table(audio_manifest)
    table = table.append_column("features_url", pa.array([None] * table.num_rows, pa.string()))
    path = str(tmp_path / "manifest.parquet")
    pq.write_table(table, path)
    return path


def test_train_dit_without_features_prints_the_command(audio_manifest, tmp_path, capsys):
    manifest = _featureless(audio_manifest, tmp_path)
    assert (
        main(["train", "dit", "--manifest", manifest, "--run-dir", str(tmp_path / "run"), *QUIET])
        != 0
    )
    line = _one_error_line(capsys.readouterr().err)
    assert f"songmill train dit --manifest {manifest} --dcae-checkpoint DCAE_RUN" in line
    assert "songmill train dcae" in line and "--stages features" in line


def test_train_dit_without_features_computes_them_with_the_named_dcae(
    audio_manifest, tmp_path, capsys
):
    from songmill.model.config import preset
    from songmill.model.dcae import MusicDCAE
    from songmill.model.weights import save_module

    manifest = _featureless(audio_manifest, tmp_path)
    dcae_cfg = preset("tiny").dcae
    save_module(MusicDCAE(dcae_cfg), dcae_cfg.to_dict(), tmp_path / "dcae", "dcae")
    features = [
        "--set",
        "features.text_encoder=tiny-random",
        "--set",
        "features.mert=none",
        "--set",
        "features.mhubert=none",
        "--set",
        "features.speaker=none",
    ]
    code = main(
        [
            "train",
            "dit",
            "--manifest",
            manifest,
            "--run-dir",
            str(tmp_path / "run"),
            "--max-steps",
            "1",
            "--dcae-checkpoint",
            str(tmp_path / "dcae"),
            "--corpus",
            str(tmp_path / "corpus"),
            *features,
            *QUIET,
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "running the features stage" in captured.err
    with_features = pq.read_table(str(tmp_path / "manifest.features.parquet"))
    assert with_features.column("features_url").null_count == 0 and with_features.num_rows == 2
    assert load_checkpoint(str(tmp_path / "run")).step == 1
    assert os.listdir(tmp_path / "corpus" / "features")


def test_lora_under_fsdp_is_refused_in_one_line_and_auto_picks_ddp(tmp_path, capsys):
    from songmill.train.dist import choose_strategy

    assert choose_strategy("auto", "base") == "fsdp" and choose_strategy("auto", "small") == "ddp"
    assert choose_strategy("auto", "base", lora=True) == "ddp"
    with pytest.raises(ValueError, match="FSDP"):
        choose_strategy("fsdp", "base", lora=True)
    code = main(
        [
            "train",
            "dit",
            "--manifest",
            str(tmp_path / "m.parquet"),
            "--lora-rank",
            "4",
            "--base-checkpoint",
            str(tmp_path),
            "--set",
            "train.strategy=fsdp",
        ]
    )
    assert code != 0
    line = _one_error_line(capsys.readouterr().err)
    assert "LoRA" in line and "FSDP" in line and "ddp" in line


def test_missing_manifest_is_one_line(tmp_path, capsys):
    assert main(["train", "dit", "--manifest", str(tmp_path / "absent.parquet"), *QUIET]) != 0
    assert "absent.parquet" in _one_error_line(capsys.readouterr().err)


def test_named_samplers_and_their_overrides():
    """What `songmill generate --sampler ... --steps --guidance --guidance-type ...` builds."""
    from songmill.model.generate import sampler_settings

    settings = sampler_settings("acestep")
    assert (
        settings.steps,
        settings.guidance,
        settings.guidance_scale,
        settings.guidance_interval,
        settings.omega,
    ) == (60, "apg", 15.0, 0.5, 10.0)
    changed = sampler_settings(
        "acestep", steps=10, guidance_scale=4.0, guidance="cfg", guidance_interval=1.0
    )
    assert (changed.steps, changed.guidance, changed.guidance_scale, changed.guidance_interval) == (
        10,
        "cfg",
        4.0,
        1.0,
    )
    assert sampler_settings("heun").method == "heun" and sampler_settings("euler").guidance == "cfg"
    with pytest.raises(ValueError, match="unknown sampler"):
        sampler_settings("ddim")


def test_a_run_from_before_the_acestep_defaults_resumes_as_it_started(tmp_path, capsys):
    from test_train_objective import write_feature_manifest

    manifest = write_feature_manifest(
        str(tmp_path / "data"), [{"duration_s": 2.0}, {"duration_s": 2.0}]
    )
    run = str(tmp_path / "run")
    assert (
        main(["train", "dit", "--manifest", manifest, "--run-dir", run, "--max-steps", "1", *QUIET])
        == 0
    )
    # make it a checkpoint of the previous release: trainer.json without the new settings
    ckpt = load_checkpoint(run).path
    with open(os.path.join(ckpt, "trainer.json")) as f:
        trainer = json.load(f)
    for key in ("loss_space", "repa_reduce", "cfg_drop_lyric_mask", "lyric_crop", "val_sampler"):
        trainer["config"].pop(key, None)
        trainer["full_config"].pop(key, None)
    with open(os.path.join(ckpt, "trainer.json"), "w") as f:
        json.dump(trainer, f)
    capsys.readouterr()
    assert (
        main(["train", "dit", "--manifest", manifest, "--resume", run, "--max-steps", "2", *QUIET])
        == 0
    ), capsys.readouterr().err
    config = load_checkpoint(run).trainer["config"]
    assert (config["loss_space"], config["repa_reduce"], config["cfg_drop_lyric_mask"]) == (
        "velocity",
        "sum",
        False,
    )
