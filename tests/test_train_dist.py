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
    from songmill.model.config import preset
    from songmill.model.dcae import MusicDCAE
    from songmill.model.weights import save_module
    from songmill.train.prepare import cache_features, synthetic_manifest

    root = tmp_path_factory.mktemp("dist")
    manifest = synthetic_manifest(str(root / "data"), n_tracks=4, duration_s=2.0)
    dcae_cfg = preset("tiny").dcae
    save_module(MusicDCAE(dcae_cfg), dcae_cfg.to_dict(), root / "dcae", "dcae")
    return cache_features(manifest, str(root / "corpus"), str(root / "m.parquet"), dcae_checkpoint=str(root / "dcae"),
                          text_encoder="tiny-random", mert="none", mhubert="none", speaker="none")


def torchrun(run_dir, manifest, port: int, *extra: str) -> list[list[dict]]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port),
           "-m", "songmill.flows.cli", "train", "dit", "--manifest", manifest, "--run-dir", str(run_dir), "--max-steps", "3",
           "--batch-size", "1", "--device", "cpu", "--set", "train.trace=true", "--set", "train.progress=false",
           "--set", "train.max_crop_s=2.0", "--set", "train.val_every=0", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    traces = []
    for rank in range(2):
        with open(os.path.join(run_dir, f"trace-rank{rank}.jsonl")) as f:
            traces.append([json.loads(line) for line in f])
    return traces


def test_ddp_ranks_read_disjoint_data_and_keep_equal_weights(feature_manifest, tmp_path):
    traces = torchrun(tmp_path, feature_manifest, 29611)
    batches = [[r["track_ids"] for r in t if "track_ids" in r] for t in traces]
    assert len(batches[0]) == len(batches[1]) == 3
    for mine, theirs in zip(*batches, strict=True):
        assert not set(mine) & set(theirs)
    digests = [t[-1]["weights_sha256"] for t in traces]
    assert digests[0] == digests[1]
    assert os.path.exists(tmp_path / "checkpoints" / "step-00000003" / "dit.safetensors")


@pytest.mark.slow
def test_fsdp_trains_checkpoints_and_resumes(feature_manifest, tmp_path):
    from songmill.train.checkpoint import load_checkpoint

    traces = torchrun(tmp_path, feature_manifest, 29612, "--set", "train.strategy=fsdp")
    batches = [[r["track_ids"] for r in t if "track_ids" in r] for t in traces]
    assert all(not set(a) & set(b) for a, b in zip(*batches, strict=True))
    torchrun(tmp_path, feature_manifest, 29613, "--set", "train.strategy=fsdp", "--resume", str(tmp_path), "--max-steps", "4", "--force")
    ckpt = load_checkpoint(str(tmp_path))
    assert ckpt.step == 4 and ckpt.trainer["world_size"] == 2
