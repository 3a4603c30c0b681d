"""The tiny presets train on a synthetic manifest on CPU: DCAE (both phases) and DiT, exact
resume, SIGTERM checkpoints, refused config changes, `songmill generate`."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file
from songmill.train.checkpoint import CheckpointError, load_checkpoint
from songmill.train.config import TrainConfig
from songmill.train.loop import train
from songmill.train.prepare import cache_features, synthetic_manifest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUIET = dict(progress=False, val_every=0, ckpt_every=0, log_every=1)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> str:
    return synthetic_manifest(str(tmp_path_factory.mktemp("data")), n_tracks=4, duration_s=2.0)


@pytest.fixture(scope="module")
def dcae_run(manifest, tmp_path_factory) -> str:
    run = str(tmp_path_factory.mktemp("dcae"))
    cfg = TrainConfig(
        kind="dcae", batch_size=2, max_crop_s=1.0, max_steps=3, warmup_steps=1, **QUIET
    )
    train(cfg, manifest, run)
    return run


@pytest.fixture(scope="module")
def feature_manifest(manifest, dcae_run, tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("features")
    return cache_features(
        manifest,
        str(out / "corpus"),
        str(out / "manifest.parquet"),
        dcae_checkpoint=dcae_run,
        text_encoder="tiny-random",
        mert="none",
        mhubert="none",
        speaker="none",
    )


def dit_config(**overrides) -> TrainConfig:
    values = dict(
        kind="dit", batch_size=2, max_crop_s=2.0, max_steps=6, warmup_steps=2, lr=1e-3, **QUIET
    )
    return TrainConfig(**{**values, **overrides})


def test_dcae_phase1_writes_safetensors_checkpoint_and_sample(manifest, tmp_path):
    cfg = TrainConfig(
        kind="dcae",
        batch_size=2,
        max_crop_s=1.0,
        max_steps=2,
        progress=False,
        val_every=2,
        val_duration_s=1.0,
        griffin_lim_iters=2,
        ckpt_every=0,
    )
    result = train(cfg, manifest, str(tmp_path))
    ckpt = result.checkpoint
    files = set(os.listdir(ckpt))
    assert {
        "dcae.safetensors",
        "dcae.json",
        "dcae_ema.safetensors",
        "state.safetensors",
        "state.json",
        "trainer.json",
    } <= files
    assert not [f for f in files if f.endswith((".pt", ".pth", ".bin", ".pkl"))]
    sample = result.samples[-1]
    assert sf.info(sample["wav"]).duration > 0.5
    assert "step: 2" in open(sample["txt"]).read()
    assert os.listdir(tmp_path / "tensorboard")


def test_dcae_loss_falls_on_an_overfit_batch(tmp_path):
    one = synthetic_manifest(str(tmp_path / "one"), n_tracks=1, duration_s=1.0)
    cfg = TrainConfig(
        kind="dcae",
        batch_size=2,
        max_crop_s=1.0,
        max_steps=30,
        warmup_steps=1,
        lr=3e-3,
        ema_decay=0.0,
        decay="constant",
        **QUIET,
    )
    losses = train(cfg, one, str(tmp_path / "run")).losses
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5


def test_dcae_phase2_trains_decoder_and_discriminator_only(manifest, dcae_run, tmp_path):
    cfg = TrainConfig(
        kind="dcae",
        dcae_phase=2,
        init_from=dcae_run,
        batch_size=2,
        max_crop_s=1.0,
        max_steps=2,
        **QUIET,
    )
    result = train(cfg, manifest, str(tmp_path))
    ckpt = load_checkpoint(result.checkpoint)
    assert "disc_optimizer" in ckpt.state and ckpt.has("discriminator")
    start = load_checkpoint(dcae_run)
    before, after = start.weights("dcae_ema"), ckpt.weights("dcae")
    encoder_keys = [k for k in before if k.startswith("encoder.")]
    decoder_keys = [k for k in before if k.startswith("decoder.") and before[k].is_floating_point()]
    assert all(torch.equal(before[k], after[k]) for k in encoder_keys)  # frozen: latent space kept
    assert any(not torch.equal(before[k], after[k]) for k in decoder_keys)
    # the latent constants: calibrated on data by the phase-1 run, kept as they are by phase 2
    from songmill.model.config import preset

    assert before["latent_scale"].item() != pytest.approx(preset("tiny").dcae.latent_scale)
    assert torch.equal(before["latent_shift"], after["latent_shift"]) and torch.equal(
        before["latent_scale"], after["latent_scale"]
    )


def test_dit_trains_on_cached_features(feature_manifest, tmp_path):
    result = train(dit_config(max_steps=3), feature_manifest, str(tmp_path))
    assert len(result.losses) == 3 and all(torch.isfinite(torch.tensor(result.losses)))
    trainer = load_checkpoint(result.checkpoint).trainer
    assert trainer["conditioning"]["text_encoder"] == "tiny-random"


def test_dit_loss_falls_on_an_overfit_batch(tmp_path, dcae_run):
    one = synthetic_manifest(str(tmp_path / "one"), n_tracks=1, duration_s=2.0)
    features = cache_features(
        one,
        str(tmp_path / "corpus"),
        str(tmp_path / "m.parquet"),
        dcae_checkpoint=dcae_run,
        text_encoder="tiny-random",
        mert="none",
        mhubert="none",
        speaker="none",
    )
    cfg = dit_config(
        batch_size=4,
        max_steps=60,
        lr=3e-3,
        ema_decay=0.0,
        decay="constant",
        cfg_p_text=0.0,
        cfg_p_lyrics=0.0,
        cfg_p_speaker=0.0,
    )
    losses = train(cfg, features, str(tmp_path / "run")).losses
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:10]) / 10


def test_kill_and_resume_equals_an_uninterrupted_run(feature_manifest, tmp_path):
    cfg = dit_config(max_steps=6, grad_accum=2)
    full = train(cfg, feature_manifest, str(tmp_path / "full"))
    first = train(cfg.updated({"stop_at_step": 3}), feature_manifest, str(tmp_path / "split"))
    assert first.step == 3 and first.checkpoint.endswith("step-00000003")
    rest = train(cfg, feature_manifest, str(tmp_path / "split"), resume=str(tmp_path / "split"))
    assert first.losses + rest.losses == full.losses  # exactly, step by step
    a = load_file(os.path.join(full.checkpoint, "dit.safetensors"))
    b = load_file(os.path.join(rest.checkpoint, "dit.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    ema_a = load_file(os.path.join(full.checkpoint, "dit_ema.safetensors"))
    ema_b = load_file(os.path.join(rest.checkpoint, "dit_ema.safetensors"))
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)


def test_resume_with_changed_settings_is_refused_unless_forced(feature_manifest, tmp_path):
    cfg = dit_config(max_steps=1)
    train(cfg, feature_manifest, str(tmp_path))
    changed = cfg.updated({"max_steps": 2, "lr": 5e-4})
    with pytest.raises(CheckpointError, match="lr"):
        train(changed, feature_manifest, str(tmp_path), resume=str(tmp_path))
    assert (
        train(changed, feature_manifest, str(tmp_path), resume=str(tmp_path), force=True).step == 2
    )


def test_sigterm_writes_a_checkpoint_and_stops(feature_manifest, tmp_path):
    run = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "songmill.flows.cli",
        "train",
        "dit",
        "--manifest",
        feature_manifest,
        "--run-dir",
        str(run),
        "--max-steps",
        "100000",
        "--set",
        "train.progress=false",
        "--set",
        "train.ckpt_every=0",
        "--set",
        "train.val_every=0",
        "--set",
        "train.max_crop_s=2.0",
        "--batch-size",
        "2",
        "--set",
        "train.trace=true",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        trace = run / "trace-rank0.jsonl"
        deadline = time.time() + 60
        while time.time() < deadline and (
            not trace.exists() or len(trace.read_text().splitlines()) < 3
        ):
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["stopped_by_signal"] is True
    ckpt = load_checkpoint(str(run))
    assert 1 <= ckpt.step < 100000 and ckpt.step == summary["step"]


def test_generate_writes_audio_of_the_requested_duration(feature_manifest, tmp_path):
    from songmill.flows.cli import main

    result = train(dit_config(max_steps=1), feature_manifest, str(tmp_path / "run"))
    lyrics = tmp_path / "lyrics.txt"
    lyrics.write_text("[verse]\nsing the night away\n")
    out = tmp_path / "song.wav"
    code = main(
        [
            "generate",
            "--checkpoint",
            str(tmp_path / "run"),
            "--prompt",
            "funk, 104 bpm",
            "--lyrics",
            str(lyrics),
            "--duration",
            "1.5",
            "--out",
            str(out),
            "--steps",
            "2",
        ]
    )
    assert code == 0
    info = sf.info(out)
    assert info.samplerate == 44100 and info.channels == 2 and info.frames == round(1.5 * 44100)
    assert result.checkpoint


def test_generate_refuses_a_pickle_checkpoint_in_one_line(tmp_path, capsys):
    from songmill.flows.cli import main

    torch.save({"dit": torch.zeros(1)}, tmp_path / "dit.pt")
    args = [
        "generate",
        "--checkpoint",
        str(tmp_path),
        "--prompt",
        "x",
        "--duration",
        "1",
        "--out",
        str(tmp_path / "o.wav"),
    ]
    assert main(args) != 0
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "pickle" in err and "Traceback" not in err
    with pytest.raises(CheckpointError, match="pickle"):  # --debug lets the exception through
        main([*args, "--debug"])


def test_dcae_fine_tunes_from_a_weights_dir_keeping_its_latent_constants(manifest, tmp_path):
    from songmill.model.config import preset
    from songmill.model.dcae import MusicDCAE
    from songmill.model.weights import save_module

    dcae_cfg = preset("tiny").dcae
    torch.manual_seed(123)  # not the run's seed: the weights must come from the dir
    save_module(MusicDCAE(dcae_cfg), dcae_cfg.to_dict(), tmp_path / "release", "dcae")
    start = load_file(str(tmp_path / "release" / "dcae.safetensors"))
    cfg = TrainConfig(
        kind="dcae",
        init_from=str(tmp_path / "release"),
        batch_size=2,
        max_crop_s=1.0,
        max_steps=1,
        **QUIET,
    )
    after = load_checkpoint(train(cfg, manifest, str(tmp_path / "run")).checkpoint).weights("dcae")
    # the first step runs at LR 0 (warm-up from 0): the weights are still exactly the dir's
    assert all(torch.equal(start[k], after[k]) for k in start)
    assert after["latent_shift"].item() == pytest.approx(dcae_cfg.latent_shift)
    assert after["latent_scale"].item() == pytest.approx(dcae_cfg.latent_scale)


def test_features_for_a_manifest_go_through_the_runner(manifest, dcae_run, tmp_path, capsys):
    """`train dit` on a featureless manifest runs the features stage the way `songmill annotate
    --stages features` does: tracks ingested, rows with lineage, an errors row for the track that
    fails, one runs row; run again, nothing is redone and no row is duplicated."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from songmill.annotate.ingest import ingest
    from songmill.data_schema.store import Corpus
    from songmill.testaudio.synth import render_track, write_track

    rows = pq.read_table(manifest).to_pylist()
    gone = tmp_path / "moved_away.wav"  # ingested, then moved: decoding it fails in the stage
    write_track(str(gone), render_track(100.0, "C", "major", 2.0, seed=99))
    ingest(Corpus(str(tmp_path / "corpus")), [str(gone)])
    with open(gone, "rb") as f:
        bad_id = hashlib.sha256(f.read()).hexdigest()
    os.remove(gone)
    rows.append({**rows[0], "track_id": bad_id, "uri": str(gone), "duration_s": 2.0})
    mixed = str(tmp_path / "mixed.parquet")
    pq.write_table(pa.Table.from_pylist(rows), mixed)
    settings = dict(
        dcae_checkpoint=dcae_run,
        text_encoder="tiny-random",
        mert="none",
        mhubert="none",
        speaker="none",
    )
    out = cache_features(mixed, str(tmp_path / "corpus"), str(tmp_path / "f.parquet"), **settings)
    assert "moved_away.wav" in capsys.readouterr().err
    written = pq.read_table(out)
    assert sorted(written.column("track_id").to_pylist()) == sorted(
        r["track_id"] for r in rows[:-1]
    )
    corpus = Corpus(str(tmp_path / "corpus"), create=False)
    assert corpus.sql("SELECT count(*) FROM tracks").column(0)[0].as_py() == len(rows)
    features = corpus.sql("SELECT track_id, inputs, run_id FROM features").to_pylist()
    assert len(features) == len(rows) - 1 and all(
        f["run_id"] == features[0]["run_id"] for f in features
    )
    errors = corpus.sql("SELECT track_id, stage FROM errors WHERE stage = 'features'").to_pylist()
    assert errors == [{"track_id": bad_id, "stage": "features"}]
    runs = corpus.sql("SELECT stage, n_ok, n_error FROM runs WHERE stage = 'features'").to_pylist()
    assert runs == [{"stage": "features", "n_ok": len(rows) - 1, "n_error": 1}]

    cache_features(mixed, str(tmp_path / "corpus"), str(tmp_path / "f2.parquet"), **settings)
    assert corpus.sql("SELECT count(*) FROM features").column(0)[0].as_py() == len(rows) - 1
    assert pq.read_table(str(tmp_path / "f2.parquet")).num_rows == len(rows) - 1
