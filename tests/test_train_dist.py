"""Two CPU processes under torchrun (gloo): ranks read disjoint data and keep equal weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def feature_manifest(tmp_path_factory) -> str:
    """Four tracks; only the first two have REPA targets, so some steps give one rank's REPA
    projectors no target while the other rank's have one."""
    from test_train_objective import write_feature_manifest

    root = tmp_path_factory.mktemp("dist")
    tracks = [
        {"duration_s": 2.0, "repa": i < 2, "lyrics": "la la" if i % 2 else ""} for i in range(4)
    ]
    return write_feature_manifest(str(root / "data"), tracks)


def free_port() -> int:
    """A port nobody listens on now (fixed ports collide when two test runs share a machine)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def torchrun(run_dir, manifest, *extra: str) -> list[list[dict]]:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        str(free_port()),
        "-m",
        "songmill.flows.cli",
        "train",
        "dit",
        "--manifest",
        manifest,
        "--run-dir",
        str(run_dir),
        "--max-steps",
        "3",
        "--batch-size",
        "1",
        "--device",
        "cpu",
        "--set",
        "train.trace=true",
        "--set",
        "train.progress=false",
        "--set",
        "train.max_crop_s=2.0",
        "--set",
        "train.val_every=0",
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    traces = []
    for rank in range(2):
        with open(os.path.join(run_dir, f"trace-rank{rank}.jsonl")) as f:
            traces.append([json.loads(line) for line in f])
    return traces


def test_ddp_ranks_read_disjoint_data_and_keep_equal_weights(feature_manifest, tmp_path):
    import pyarrow.parquet as pq
    import torch
    from safetensors.torch import load_file

    traces = torchrun(tmp_path, feature_manifest)
    batches = [[r["track_ids"] for r in t if "track_ids" in r] for t in traces]
    assert len(batches[0]) == len(batches[1]) == 3
    for mine, theirs in zip(*batches, strict=True):
        assert not set(mine) & set(theirs)
    # a step where one rank's batch has REPA targets and the other's has none happened, and
    # DDP went through it (every parameter took part on both ranks)
    with_repa = set(pq.read_table(feature_manifest).column("track_id").to_pylist()[:2])
    assert any(
        (set(a) <= with_repa) != (set(b) <= with_repa) for a, b in zip(*batches, strict=True)
    )
    digests = [t[-1]["weights_sha256"] for t in traces]
    assert digests[0] == digests[1]
    # the projectors learned: the live weights moved away from the EMA (which starts at the init)
    weights = load_file(str(tmp_path / "checkpoints" / "step-00000003" / "dit.safetensors"))
    ema = load_file(str(tmp_path / "checkpoints" / "step-00000003" / "dit_ema.safetensors"))
    projector_keys = [k for k in weights if k.startswith(("projectors.", "repa_projectors."))]
    assert projector_keys and any(not torch.equal(weights[k], ema[k]) for k in projector_keys)


@pytest.mark.slow  # two torchrun processes (~40 s on a busy 2-core machine)
def test_lora_under_torchrun_trains_with_ddp_and_saves_full_adapters(feature_manifest, tmp_path):
    from safetensors.torch import load_file
    from songmill.train.config import TrainConfig
    from songmill.train.loop import train

    base = tmp_path / "base"
    train(
        TrainConfig(
            kind="dit",
            max_steps=1,
            batch_size=2,
            max_crop_s=2.0,
            progress=False,
            val_every=0,
            ckpt_every=0,
        ),
        feature_manifest,
        str(base),
    )
    run = tmp_path / "lora"
    traces = torchrun(
        run,
        feature_manifest,
        "--lora-rank",
        "4",
        "--base-checkpoint",
        str(base),
        "--set",
        "train.strategy=auto",
        "--set",
        "train.preset=tiny",
    )
    assert traces[0][-1]["weights_sha256"] == traces[1][-1]["weights_sha256"]
    adapters = load_file(str(run / "checkpoints" / "step-00000003" / "dit_lora.safetensors"))
    assert adapters and all("lora_" in k for k in adapters)
    # whole matrices (rank 4 by the layer's width), not shards
    assert all(4 in tuple(t.shape) for t in adapters.values())
    assert any(float(t.abs().sum()) > 0 for k, t in adapters.items() if "lora_B" in k)


@pytest.mark.slow
def test_fsdp_trains_checkpoints_and_resumes(feature_manifest, tmp_path):
    from songmill.train.checkpoint import load_checkpoint

    traces = torchrun(tmp_path, feature_manifest, "--set", "train.strategy=fsdp")
    batches = [[r["track_ids"] for r in t if "track_ids" in r] for t in traces]
    assert all(not set(a) & set(b) for a, b in zip(*batches, strict=True))
    torchrun(
        tmp_path,
        feature_manifest,
        "--set",
        "train.strategy=fsdp",
        "--resume",
        str(tmp_path),
        "--max-steps",
        "4",
    )
    ckpt = load_checkpoint(str(tmp_path))
    assert ckpt.step == 4 and ckpt.trainer["world_size"] == 2
