"""ACE-Step's objective as the DiT's default: x0-space loss, REPA mean after block index 8, the
lyric mask zeroed on dropout, AdamW (0.8, 0.9) + clip 0.5 + warm-up / linear decay, lyrics
sliced to the crop; and the trainer's CLI edges (resume that extends, feature-less manifests,
FSDP + LoRA)."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from songmill.data_schema.shards import shard_bytes
from songmill.model.conditions import Conditions
from songmill.model.flow import denoising_loss, flow_matching_loss, x0_space_loss
from songmill.train.config import TrainConfig, TrainConfigError
from songmill.train.loop import lr_factor, train
from songmill.train.objective import combine_repa, drop_conditions

LATENT_FPS = 44100 / 512 / 8
QUIET = dict(progress=False, val_every=0, ckpt_every=0, log_every=1)


def write_feature_manifest(root, tracks: list[dict], seed: int = 0) -> str:
    """Shards in the features stage's format (data_schema/shards.py) with random latents, text
    states and REPA targets, and a manifest pointing at them. Each track: duration_s, and
    optionally lyrics (text), lyric_lines (timed lines), repa (bool, default True)."""
    from songmill.model.lyric_tokens import LyricTokenizer

    os.makedirs(root, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    tokenizer = LyricTokenizer.load("")
    rows = []
    for i, track in enumerate(tracks):
        duration = float(track["duration_s"])
        frames = int(np.ceil(duration * LATENT_FPS))
        tensors = {
            "latent": torch.randn(8, 16, frames, generator=gen).half(),
            "text.tags": torch.randn(5, 32, generator=gen).half(),
            "lyrics": torch.tensor(
                tokenizer.encode_ids(track.get("lyrics", "")), dtype=torch.int32
            ),
        }
        repa_fps = {}
        if track.get("repa", True):
            tensors["repa.mert"] = torch.randn(int(duration * 75), 1024, generator=gen).half()
            tensors["repa.mhubert"] = torch.randn(int(duration * 50), 768, generator=gen).half()
            repa_fps = {"mert": 75.0, "mhubert": 50.0}
        metadata = {
            "latent_frames": frames,
            "latent_fps": LATENT_FPS,
            "captions": {"tags": f"track {i}"},
            "repa_fps": repa_fps,
            "speaker_dim": 512,
            "lyric_tokenizer_path": "",
            "lyric_vocab_size": 260,
            "text_encoder": "tiny-random",
            "dcae_checkpoint": "",
            "lyric_lines": track.get("lyric_lines", []),
            "lyrics_untimed": track.get(
                "lyrics_untimed", bool(track.get("lyrics")) and not track.get("lyric_lines")
            ),
        }
        blob = shard_bytes(tensors, metadata)
        path = os.path.join(root, f"shard{i}.safetensors")
        with open(path, "wb") as f:
            f.write(blob)
        rows.append(
            {
                "track_id": hashlib.sha256(blob).hexdigest(),
                "uri": f"/nonexistent/track{i}.wav",
                "duration_s": duration,
                "qc_pass": True,
                "features_url": path,
                "lyrics": track.get("lyrics", ""),
            }
        )
    manifest = os.path.join(root, "manifest.parquet")
    pq.write_table(pa.Table.from_pylist(rows), manifest)
    return manifest


# -- the denoising loss ------------------------------------------------------------------------


def test_x0_loss_is_the_sigma_squared_weighted_velocity_loss():
    gen = torch.Generator().manual_seed(0)
    x0, noise, v = (torch.randn(3, 8, 16, 7, generator=gen) for _ in range(3))
    sigma = torch.tensor([0.1, 0.5, 0.9])
    noisy = sigma[:, None, None, None] * noise + (1 - sigma[:, None, None, None]) * x0
    mask = torch.ones(3, 7, dtype=torch.bool)
    mask[2, 4:] = False
    got = x0_space_loss(v, noisy, x0, sigma, mask)
    # the same quantity written out: per element sigma^2 * (v_target - v)^2, mean over real frames
    weighted = sigma[:, None, None, None] ** 2 * ((noise - x0) - v) ** 2
    expected = weighted[..., :4].sum() + weighted[:2, ..., 4:].sum()
    expected = expected / (3 * 8 * 16 * 4 + 2 * 8 * 16 * 3)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    # it is not the plain velocity loss, and a perfect velocity makes both zero
    assert got.item() < 0.5 * flow_matching_loss(v, x0, noise, mask).item()
    assert x0_space_loss(noise - x0, noisy, x0, sigma, mask).item() == pytest.approx(0.0, abs=1e-10)
    assert denoising_loss("velocity", v, noisy, x0, noise, sigma, mask) == flow_matching_loss(
        v, x0, noise, mask
    )
    assert denoising_loss("x0", v, noisy, x0, noise, sigma, mask) == got


def test_training_defaults_are_acestep_and_the_old_ones_stay_settings():
    cfg = TrainConfig()
    assert (cfg.loss_space, cfg.repa_reduce, cfg.cfg_drop_lyric_mask) == ("x0", "mean", True)
    assert cfg.betas == (0.8, 0.9) and cfg.grad_clip == 0.5 and cfg.weight_decay == 0.01
    assert (cfg.decay, cfg.warmup_steps, cfg.min_lr_ratio) == ("linear", 10, 0.0)
    old = cfg.updated(
        {"loss_space": "velocity", "repa_reduce": "sum", "betas": [0.9, 0.999], "decay": "cosine"}
    )
    assert old.betas == (0.9, 0.999) and old.config_hash() != cfg.config_hash()
    with pytest.raises(TrainConfigError, match="loss_space"):
        cfg.updated({"loss_space": "eps"})


def test_schedule_is_acestep_lr_lambda():
    cfg = TrainConfig(max_steps=110)  # warm-up 10, linear decay to 0
    # ACE-Step's lr_lambda: step / warmup, then max(0, 1 - (step - warmup) / (max - warmup))
    expected = [s / 10 if s < 10 else max(0.0, 1.0 - (s - 10) / 100) for s in range(110)]
    assert [lr_factor(s, cfg) for s in range(110)] == pytest.approx(expected)


def test_the_loop_builds_adamw_and_clips_with_the_defaults(tmp_path):
    manifest = write_feature_manifest(tmp_path / "data", [{"duration_s": 2.0}, {"duration_s": 2.0}])
    result = train(
        TrainConfig(kind="dit", batch_size=2, max_steps=3, **QUIET), manifest, str(tmp_path / "run")
    )
    from songmill.train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(result.checkpoint)
    state = ckpt.state
    group = state["optimizer"]["param_groups"][0]
    assert tuple(group["betas"]) == (0.8, 0.9) and group["weight_decay"] == 0.01
    assert state["scheduler"]["_last_lr"][0] == pytest.approx(1e-4 * 3 / 10)  # still warming up
    # generation from this run gives the unconditional branch the zeroed lyric mask it was trained on
    from songmill.train.tasks import uncond_lyric_mask

    assert (
        uncond_lyric_mask(ckpt.trainer["conditioning"]) == "zero"
        and uncond_lyric_mask({}) == "keep"
    )


# -- REPA ----------------------------------------------------------------------------------------


def test_repa_state_is_taken_after_block_index_8():
    from songmill.model.config import preset
    from songmill.model.dit import LinearDiT

    tiny = preset("tiny").dit
    cfg = type(tiny).from_dict(
        {**tiny.to_dict(), "depth": 10, "repa_block": preset("base").dit.repa_block}
    )
    dit = LinearDiT(cfg).eval()
    blocks = getattr(dit, "transformer_blocks", None) or dit.blocks
    projectors = (
        dit.projectors
        if isinstance(dit.projectors, torch.nn.ModuleList)
        else list(dit.projectors.values())
    )
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        blocks[8].register_forward_hook(lambda m, i, o: seen.__setitem__("block8", o)),
        blocks[7].register_forward_hook(lambda m, i, o: seen.__setitem__("block7", o)),
        projectors[0].register_forward_hook(lambda m, i, o: seen.__setitem__("projector_in", i[0])),
    ]
    gen = torch.Generator().manual_seed(0)
    cond = Conditions(
        torch.randn(1, 3, cfg.text_dim, generator=gen),
        torch.ones(1, 3, dtype=torch.bool),
        torch.tensor([[5, 6, 7]]),
        torch.ones(1, 3, dtype=torch.bool),
        torch.randn(1, 512, generator=gen),
    )
    with torch.no_grad():
        dit(torch.randn(1, 8, 16, 6, generator=gen), torch.tensor([0.5]), cond, return_repa=True)
    for h in hooks:
        h.remove()
    assert torch.equal(seen["projector_in"], seen["block8"])
    assert not torch.equal(seen["block7"], seen["block8"])


def test_repa_terms_are_averaged_by_default(tmp_path):
    from songmill.train.tasks import DiTTask

    manifest = write_feature_manifest(tmp_path, [{"duration_s": 2.0}, {"duration_s": 3.0}])
    losses = {}
    for reduce in ("mean", "sum"):
        torch.manual_seed(0)
        task = DiTTask(TrainConfig(kind="dit", repa_reduce=reduce, **QUIET), manifest)
        batch = task.collate([task.dataset[key] for key in task_keys(task)])
        loss, logs = task.loss(
            task.model, batch, torch.Generator().manual_seed(1), torch.device("cpu")
        )
        losses[reduce] = (loss.item(), logs)
    mean_loss, logs = losses["mean"]
    terms = [logs["loss/repa_mert"], logs["loss/repa_mhubert"]]
    assert mean_loss == pytest.approx(logs["loss/x0"] + sum(terms) / 2, rel=1e-5)
    assert losses["sum"][0] == pytest.approx(logs["loss/x0"] + sum(terms), rel=1e-5)
    assert combine_repa([torch.tensor(1.0), torch.tensor(3.0)]).item() == 2.0
    assert combine_repa([]) is None


def task_keys(task):
    from songmill.train.data import SampleKey

    return [SampleKey(i, 0, i, 0) for i in range(len(task.rows))]


# -- classifier-free dropout ---------------------------------------------------------------------


def _cond(batch: int = 4) -> Conditions:
    gen = torch.Generator().manual_seed(0)
    return Conditions(
        torch.randn(batch, 3, 32, generator=gen),
        torch.ones(batch, 3, dtype=torch.bool),
        torch.randint(5, 200, (batch, 6), generator=gen),
        torch.ones(batch, 6, dtype=torch.bool),
        torch.randn(batch, 512, generator=gen),
    )


def test_dropped_lyrics_lose_their_mask_too():
    cond = _cond()
    dropped = drop_conditions(cond, p_text=0.0, p_lyrics=1.0, p_speaker=0.0)
    assert not dropped.lyrics.any() and not dropped.lyrics_mask.any()
    assert torch.equal(dropped.text, cond.text) and torch.equal(dropped.speaker, cond.speaker)
    kept_mask = drop_conditions(cond, 0.0, 1.0, 0.0, drop_lyric_mask=False)
    assert not kept_mask.lyrics.any() and kept_mask.lyrics_mask.all()  # the earlier convention
    # per sample: the same draws decide ids and mask
    some = drop_conditions(cond, 0.0, 0.5, 0.0, generator=torch.Generator().manual_seed(3))
    ids_dropped, mask_dropped = ~some.lyrics.any(dim=1), ~some.lyrics_mask.any(dim=1)
    assert torch.equal(ids_dropped, mask_dropped) and 0 < int(ids_dropped.sum()) < 4


def test_the_dit_step_sees_the_zeroed_lyric_mask_and_stays_finite(tmp_path):
    from songmill.train.tasks import DiTTask

    manifest = write_feature_manifest(tmp_path, [{"duration_s": 2.0, "lyrics": "la la la"}] * 2)
    task = DiTTask(TrainConfig(kind="dit", cfg_p_lyrics=1.0, cfg_p_text=0.0, **QUIET), manifest)
    seen = []

    class Recording(torch.nn.Module):  # passes everything on to the real DiT
        def __init__(self, dit):
            super().__init__()
            self.dit = dit

        def forward(self, x, t, cond, mask, return_repa=True):
            seen.append(cond)
            return self.dit(x, t, cond, mask, return_repa=return_repa)

    batch = task.collate([task.dataset[k] for k in task_keys(task)])
    assert batch["lyrics_mask"].any()
    loss, _ = task.loss(
        Recording(task.model), batch, torch.Generator().manual_seed(0), torch.device("cpu")
    )
    loss.backward()
    assert not seen[0].lyrics_mask.any() and torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in task.model.parameters() if p.grad is not None)


# -- lyrics and audio crops agree ------------------------------------------------------------------


LINES = [
    {"start": 0.5, "end": 1.5, "text": "first line"},
    {"start": 4.5, "end": 5.5, "text": "second line"},
    {"start": 8.5, "end": 9.5, "text": "third line"},
]


def _crops(manifest, lyric_crop: str, n: int = 24):
    from songmill.data_schema.manifest import read_manifest
    from songmill.model.lyric_tokens import LyricTokenizer
    from songmill.train.data import FeatureDataset, SampleKey

    rows = read_manifest(manifest, require=("track_id", "features_url"))
    dataset = FeatureDataset(rows, max_crop_s=3.0, lyric_crop=lyric_crop)
    tokenizer = LyricTokenizer.load("")
    out = []
    for slot in range(n):
        item = dataset[SampleKey(0, 0, slot, 7)]
        out.append((item, tokenizer))
    return out


def test_timestamped_lyrics_are_sliced_to_the_crop(tmp_path):
    import songmill.train.data as data

    text = " ".join(line["text"] for line in LINES)
    manifest = write_feature_manifest(
        tmp_path, [{"duration_s": 10.0, "lyrics": text, "lyric_lines": LINES}]
    )
    starts = set()
    for item, tokenizer in _crops(manifest, "timestamps"):
        latent = item["latent"]
        from songmill.data_schema.shards import FeatureShard

        full = FeatureShard.open(pq.read_table(manifest).column("features_url")[0].as_py()).latent()
        start = next(
            s
            for s in range(full.shape[-1] - latent.shape[-1] + 1)
            if torch.equal(full[..., s : s + latent.shape[-1]], latent)
        )
        starts.add(start)
        begin_s, end_s = start / data.LATENT_FPS, (start + latent.shape[-1]) / data.LATENT_FPS
        sung = [ln["text"] for ln in LINES if begin_s <= (ln["start"] + ln["end"]) / 2 < end_s]
        expected = tokenizer.encode_ids("\n".join(sung)) if sung else [0]
        assert item["lyrics"].tolist() == expected
    assert len(starts) > 5  # crops land anywhere


def test_lyric_crop_start_and_full(tmp_path):
    text = " ".join(line["text"] for line in LINES)
    timed = write_feature_manifest(
        tmp_path / "timed", [{"duration_s": 10.0, "lyrics": text, "lyric_lines": LINES}]
    )
    untimed = write_feature_manifest(tmp_path / "untimed", [{"duration_s": 10.0, "lyrics": text}])
    from songmill.data_schema.shards import FeatureShard

    full = FeatureShard.open(pq.read_table(timed).column("features_url")[0].as_py())
    everything = full.lyric_ids().tolist()
    for item, _ in _crops(timed, "start", 6):  # ACE-Step: from the start, all the lyrics
        assert torch.equal(item["latent"], full.latent(0, item["latent"].shape[-1]))
        assert item["lyrics"].tolist() == everything
    # no timestamps: "timestamps" falls back to crops from the start
    untimed_shard = FeatureShard.open(pq.read_table(untimed).column("features_url")[0].as_py())
    for item, _ in _crops(untimed, "timestamps", 6):
        assert torch.equal(item["latent"], untimed_shard.latent(0, item["latent"].shape[-1]))
    # an instrumental ("[instrumental]" ids, nothing sung: lyrics_untimed false) crops anywhere
    inst = write_feature_manifest(
        tmp_path / "inst",
        [{"duration_s": 10.0, "lyrics": "[instrumental]", "lyrics_untimed": False}],
    )
    inst_shard = FeatureShard.open(pq.read_table(inst).column("features_url")[0].as_py())
    inst_items = [item for item, _ in _crops(inst, "timestamps", 12)]
    assert any(
        not torch.equal(item["latent"], inst_shard.latent(0, item["latent"].shape[-1]))
        for item in inst_items
    )
    anywhere = [item for item, _ in _crops(timed, "full", 12)]
    assert all(item["lyrics"].tolist() == everything for item in anywhere)
    assert any(
        not torch.equal(item["latent"], full.latent(0, item["latent"].shape[-1]))
        for item in anywhere
    )


def test_features_stage_keeps_the_transcript_timestamps():
    from songmill.annotate.base import Track
    from songmill.annotate.features import FeaturesConfig, lyric_lines, lyrics_untimed

    segments = [
        {"start": 0.0, "end": 2.0, "text": " hello there"},
        {"start": 3.0, "end": 4.5, "text": " general"},
    ]
    track = Track(
        {"track_id": "t", "uri": "x"},
        {"transcripts": {"text": "hello there general", "segments": segments}},
    )
    lines = lyric_lines(track, "hello there general")
    assert [(ln["start"], ln["end"]) for ln in lines] == [(0.0, 2.0), (3.0, 4.5)]
    assert (
        lyric_lines(track, "a catalog lyric with other words") == []
    )  # not the transcript: no times
    # the tokens stage's section-tagged transcript: each tag goes with the segment it starts in
    tagged = lyric_lines(track, "[verse]\nhello there\n[chorus]\ngeneral")
    assert [ln["text"] for ln in tagged] == ["[verse]\nhello there", "[chorus]\ngeneral"]
    assert [ln["start"] for ln in tagged] == [0.0, 3.0]
    assert FeaturesConfig().mert_chunk_s == 5.0 and FeaturesConfig().ssl_chunk_s == 30.0
    assert lyrics_untimed("a catalog lyric", []) and not lyrics_untimed("[instrumental]", [])
    assert not lyrics_untimed("hello there general", lines) and not lyrics_untimed("", [])


def test_dit_fine_tunes_from_a_checkpoint_with_its_own_config(tmp_path):
    from safetensors.torch import load_file
    from songmill.model.config import preset
    from songmill.model.dit import LinearDiT
    from songmill.model.weights import save_module
    from songmill.train.checkpoint import load_checkpoint

    manifest = write_feature_manifest(tmp_path / "data", [{"duration_s": 2.0}, {"duration_s": 2.0}])
    tiny = preset("tiny").dit
    # a DiT shaped unlike the preset (3 blocks), as an imported release would be
    cfg = type(tiny).from_dict({**tiny.to_dict(), "depth": 3, "text_dim": 32, "repa_block": 2})
    torch.manual_seed(5)
    save_module(LinearDiT(cfg), cfg.to_dict(), tmp_path / "pretrained", "dit")
    start = load_file(str(tmp_path / "pretrained" / "dit.safetensors"))
    run = train(
        TrainConfig(
            kind="dit", init_from=str(tmp_path / "pretrained"), batch_size=2, max_steps=1, **QUIET
        ),
        manifest,
        str(tmp_path / "run"),
    )
    after = load_checkpoint(run.checkpoint).weights("dit")
    assert set(after) == set(start) and all(
        torch.equal(start[k], after[k]) for k in start
    )  # LR 0 at step 0
    # features from another text encoder are refused, in one sentence
    wide = type(tiny).from_dict({**tiny.to_dict(), "text_dim": 768})
    save_module(LinearDiT(wide), wide.to_dict(), tmp_path / "wide", "dit")
    with pytest.raises(ValueError, match="768-d text states but the features hold 32-d"):
        train(
            TrainConfig(kind="dit", init_from=str(tmp_path / "wide"), max_steps=1, **QUIET),
            manifest,
            str(tmp_path / "r2"),
        )
