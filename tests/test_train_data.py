"""Training data order, padding, checkpoint state flattening, pickle refusal, settings."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from songmill.data_schema.manifest import ManifestError, ManifestRecord, read_manifest
from songmill.train.checkpoint import (
    CheckpointError,
    check_config_matches,
    flatten_state,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    unflatten_state,
)
from songmill.train.config import TrainConfig, TrainConfigError
from songmill.train.data import (
    BatchStream,
    BucketBatchOrder,
    DataPosition,
    SampleKey,
    collate_features,
    collate_mel,
    load_crop,
    sample_rng,
)
from songmill.train.loop import lr_factor


def test_ranks_read_disjoint_samples_and_cover_the_epoch():
    lengths = [float(x) for x in np.random.default_rng(0).uniform(5, 200, 37)]
    orders = [
        BucketBatchOrder(lengths, batch_size=3, bucket=30.0, seed=7, rank=r, world_size=2)
        for r in range(2)
    ]
    epochs = [o.epoch_batches(0) for o in orders]
    assert len(epochs[0]) == len(epochs[1]) == 37 // 6
    seen: list[int] = []
    for b0, b1 in zip(*epochs, strict=True):
        ids0, ids1 = {k.index for k in b0}, {k.index for k in b1}
        assert not ids0 & ids1
        seen += [k.index for k in b0 + b1]
    assert len(seen) == len(set(seen))  # no sample twice in an epoch
    # same order for the same seed and epoch, another one for the next epoch
    assert [k.index for k in orders[0].epoch_batches(0)[0]] == [k.index for k in epochs[0][0]]
    assert [[k.index for k in b] for b in orders[0].epoch_batches(1)] != [
        [k.index for k in b] for b in epochs[0]
    ]


def test_buckets_group_similar_lengths():
    lengths = [10.0] * 8 + [200.0] * 8
    batches = BucketBatchOrder(lengths, batch_size=4, bucket=30.0, seed=0).epoch_batches(0)
    for batch in batches:
        assert len({lengths[k.index] for k in batch}) == 1


def test_small_corpus_is_repeated_to_fill_a_batch():
    batches = BucketBatchOrder([3.0, 4.0], batch_size=4, bucket=30.0, seed=0).epoch_batches(0)
    assert len(batches) == 1 and len(batches[0]) == 4


class _Echo(torch.utils.data.Dataset):
    def __getitem__(self, key: SampleKey):
        return {"index": key.index, "draw": float(sample_rng(key).uniform())}

    def __len__(self):
        return 10


def _collate(items):
    return [(i["index"], i["draw"]) for i in items]


def test_batch_stream_resumes_at_the_same_batch_with_the_same_random_draws():
    order = BucketBatchOrder([5.0] * 10, batch_size=3, bucket=30.0, seed=1)
    full = BatchStream(_Echo(), order, _collate)
    reference = [next(full) for _ in range(8)]  # crosses an epoch boundary (3 batches / epoch)
    first = BatchStream(_Echo(), order, _collate)
    head = [next(first) for _ in range(4)]
    resumed = BatchStream(
        _Echo(), order, _collate, position=DataPosition(**first.position.to_dict())
    )
    tail = [next(resumed) for _ in range(4)]
    assert head + tail == reference
    assert first.position == DataPosition(1, 1)


def test_collate_mel_pads_to_multiple_of_8_with_mask():
    items = [
        {"mel": torch.zeros(2, 128, 13), "track_id": "a"},
        {"mel": torch.ones(2, 128, 5), "track_id": "b"},
    ]
    batch = collate_mel(items)
    assert batch["mel"].shape == (2, 2, 128, 16)
    assert batch["frame_mask"].sum(1).tolist() == [13, 5]
    assert float(batch["mel"][1, :, :, 5:].max()) == -1.0  # padding is silence


def test_collate_features_pads_every_sequence():
    def item(frames, text_len, lyric_len, repa_len):
        return {
            "track_id": "t",
            "caption": "c",
            "latent": torch.randn(8, 16, frames),
            "text": torch.randn(text_len, 32),
            "lyrics": torch.arange(1, lyric_len + 1),
            "speaker": torch.zeros(512),
            "repa": {"mert": torch.randn(repa_len, 24)},
        }

    batch = collate_features([item(5, 3, 4, 30), item(9, 6, 2, 60)])
    assert batch["latent"].shape == (2, 8, 16, 9)
    assert batch["frame_mask"].sum(1).tolist() == [5, 9]
    assert batch["text"].shape == (2, 6, 32) and batch["text_mask"].sum(1).tolist() == [3, 6]
    assert batch["lyrics_mask"].sum(1).tolist() == [4, 2]
    target, mask = batch["repa"]["mert"]
    assert target.shape == (2, 60, 24) and mask.sum(1).tolist() == [30, 60]


def test_read_manifest_requires_columns_and_drops_failed_qc(tmp_path):
    path = str(tmp_path / "m.parquet")
    pq.write_table(
        pa.table(
            {
                "track_id": ["a", "b"],
                "uri": ["x", "y"],
                "duration_s": [1.0, 2.0],
                "qc_pass": [True, False],
            }
        ),
        path,
    )
    assert [r.track_id for r in read_manifest(path)] == ["a"]
    with pytest.raises(ManifestError, match="features_url"):
        read_manifest(path, require=("track_id", "features_url"))


def test_load_crop_reads_a_random_stereo_crop(tmp_path):
    import soundfile as sf

    sr = 22050
    mono = np.linspace(-0.5, 0.5, sr * 3, dtype=np.float32)
    sf.write(tmp_path / "a.wav", mono, sr)
    row = ManifestRecord("a", str(tmp_path / "a.wav"), 3.0)
    crop = load_crop(row, 1.0, np.random.default_rng(0))
    assert crop.shape == (2, 44100)  # resampled to 44.1 kHz, mono duplicated
    other = load_crop(row, 1.0, np.random.default_rng(1))
    assert not np.allclose(crop, other)  # different offsets


def test_optimizer_state_round_trips_through_safetensors_and_json():
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    tensors: dict[str, torch.Tensor] = {}
    skeleton = json.loads(json.dumps(flatten_state(opt.state_dict(), tensors)))
    restored = unflatten_state(skeleton, tensors)
    fresh = torch.optim.AdamW(model.parameters(), lr=5.0)
    fresh.load_state_dict(restored)
    assert fresh.param_groups[0]["lr"] == 1e-3
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(fresh.state_dict()["state"][0][key], opt.state_dict()["state"][0][key])


def test_rng_state_round_trip():
    gen = torch.Generator().manual_seed(3)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = json.loads(json.dumps(flatten_state(rng_state({"train": gen}), tensors)))
    expected = (torch.rand(3), np.random.rand(), torch.rand(2, generator=gen))
    torch.rand(5), np.random.rand(), torch.rand(4, generator=gen)  # move every stream on
    set_rng_state(unflatten_state(skeleton, tensors), {"train": gen})
    assert torch.equal(torch.rand(3), expected[0])
    assert np.random.rand() == expected[1]
    assert torch.equal(torch.rand(2, generator=gen), expected[2])


def test_checkpoint_is_atomic_and_keeps_the_last_ones(tmp_path):
    net = torch.nn.Linear(2, 2)
    for step in (1, 2, 3):
        save_checkpoint(
            str(tmp_path),
            step,
            {"net": (net, {"width": 2})},
            {"x": torch.ones(1)},
            {"config": {}},
            keep=2,
        )
    names = sorted(os.listdir(tmp_path / "checkpoints"))
    assert names == ["latest", "step-00000002", "step-00000003"]
    ckpt = load_checkpoint(str(tmp_path))
    assert ckpt.step == 3 and torch.equal(ckpt.state["x"], torch.ones(1))
    assert torch.equal(ckpt.weights("net")["weight"], net.weight.detach())


def test_pickle_checkpoints_are_refused(tmp_path):
    torch.save({"weight": torch.zeros(1)}, tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="refusing pickle"):
        load_checkpoint(str(tmp_path))


def test_changed_settings_are_refused_unless_forced():
    saved = TrainConfig(lr=1e-4).hashed_fields()
    current = TrainConfig(lr=2e-4, log_every=99).hashed_fields()  # log_every is not hashed
    with pytest.raises(CheckpointError, match="lr"):
        check_config_matches(saved, current, force=False)
    assert check_config_matches(saved, current, force=True) == ["lr"]


def test_config_types_are_checked():
    cfg = TrainConfig().updated({"max_steps": "12", "lora_targets": "a,b", "betas": [0.8, 0.9]})
    assert cfg.max_steps == 12 and cfg.lora_targets == ["a", "b"] and cfg.betas == (0.8, 0.9)
    with pytest.raises(TrainConfigError, match="unknown"):
        TrainConfig().updated({"learning_rate": 1})
    with pytest.raises(TrainConfigError):
        TrainConfig().updated({"decay": "exponential"})


def test_lr_warms_up_then_decays():
    cfg = TrainConfig(warmup_steps=10, max_steps=110, decay="cosine", min_lr_ratio=0.1)
    factors = [lr_factor(s, cfg) for s in range(110)]
    # warm-up from 0 as ACE-Step's lr_lambda (step / warmup_steps), full LR at the warm-up's end
    assert (
        factors[0] == 0.0 and factors[5] == pytest.approx(0.5) and factors[10] == pytest.approx(1.0)
    )
    assert all(a >= b for a, b in zip(factors[10:], factors[11:], strict=False))
    assert factors[-1] == pytest.approx(0.1, abs=1e-3)
    assert factors[60] == pytest.approx(0.1 + 0.9 * 0.5)  # cosine midpoint


def test_lyric_tokenizer_is_trained_on_the_corpus_lyrics(corpus, tmp_path):
    from songmill.data_schema.store import utcnow
    from songmill.flows.cli import main
    from songmill.model.lyric_tokens import LyricTokenizer

    lines = [
        "sing the night away",
        "light my heart again",
        "dance slow tonight",
        "sing my heart away",
    ]
    corpus.write(
        "lyrics",
        [
            {"lyric_id": f"L{i}", "lyrics": line, "created_at": utcnow()}
            for i, line in enumerate(lines * 5)
        ],
    )
    out = str(tmp_path / "bpe.json")
    assert (
        main(["train", "tokenizer", "--corpus", corpus.root, "--out", out, "--vocab-size", "300"])
        == 0
    )
    tokenizer = LyricTokenizer.load(out)
    ids = tokenizer.encode_ids("sing my heart away")
    assert ids[0] == 1 and ids[-1] == 2 and len(ids) < len("sing my heart away")
    assert tokenizer.name.startswith("bpe-") and LyricTokenizer.load("").name == "bytes"


def test_loader_workers_do_not_change_the_batches():
    order = BucketBatchOrder([5.0] * 10, batch_size=3, bucket=30.0, seed=4)
    in_process = BatchStream(_Echo(), order, _collate, num_workers=0)
    workers = BatchStream(_Echo(), order, _collate, num_workers=2)
    assert [next(in_process) for _ in range(5)] == [next(workers) for _ in range(5)]


def test_manifest_records_are_typed_and_features_are_counted_from_the_footer(tmp_path):
    from songmill.data_schema.manifest import features_count

    path = str(tmp_path / "m.parquet")
    table = pa.table(
        {
            "track_id": ["a", "b", "c"],
            "uri": ["x", "y", "z"],
            "duration_s": [1.0, 2.0, 3.0],
            "qc_pass": [True, None, False],
            "features_url": ["fa", None, "fc"],
            "lyrics": ["la la", None, None],
            "beats": [[0.5, 1.0], [], [0.2]],  # a column the trainer never reads
        }
    )
    pq.write_table(table, path)
    records = read_manifest(path)
    assert records == [
        ManifestRecord("a", "x", 1.0, "fa", "la la"),
        ManifestRecord("b", "y", 2.0, None, None),
    ]
    assert [r.track_id for r in read_manifest(path, require=("features_url",))] == ["a"]
    assert features_count(path) == (2, 3)
    pq.write_table(
        table, path, write_statistics=False
    )  # no null counts in the footer: read the column
    assert features_count(path) == (2, 3)
    pq.write_table(table.drop(["features_url"]), path)
    assert features_count(path) == (0, 3)
    # a nested column before features_url holds several leaf columns in the footer
    estimates = pa.array([[{"estimator": "dsp", "bpm": 120.0}], None, None])
    pq.write_table(pa.table({"bpm_estimates": estimates, "features_url": ["fa", "fb", None]}), path)
    assert features_count(path) == (2, 3)
    pq.write_table(
        pa.table(
            {"track_id": ["a"], "uri": ["x"], "duration_s": [1.0], "qc_pass": pa.array([None])}
        ),
        path,
    )
    assert [r.track_id for r in read_manifest(path)] == ["a"]  # qc never ran: nothing failed it
    with pytest.raises(ManifestError, match="cannot read manifest"):
        read_manifest(str(tmp_path / "absent.parquet"))
