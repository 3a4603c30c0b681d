"""The aesthetics stage with a tiny randomly initialised AesMultiOutput (the audiobox-aesthetics
package's own class) saved in the release layout and loaded through the stage's loading code."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import rows, tone, write_audio
from songmill.annotate.ingest import ingest
from songmill.annotate.runner import run_stages

torch = pytest.importorskip("torch")
pytest.importorskip("audiobox_aesthetics")

from songmill.annotate.aesthetics import (  # noqa: E402
    AestheticsConfig,
    AestheticsStage,
    build_model,
    load_model,
    save_model,
    windows,
)

TINY_WAVLM = {
    "encoder_layers": 2, "encoder_embed_dim": 32, "encoder_ffn_embed_dim": 64,
    "encoder_attention_heads": 2, "conv_feature_layers": "[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2",
    "conv_pos": 16, "conv_pos_groups": 4, "num_buckets": 32, "max_distance": 100,
}  # fmt: skip
TRANSFORM = {
    "CE": {"mean": 5.5, "std": 1.5},
    "CU": {"mean": 6.0, "std": 1.2},
    "PC": {"mean": 4.0, "std": 1.0},
    "PQ": {"mean": 6.5, "std": 1.1},
}


def save_tiny(directory, seed: int = 0) -> str:
    torch.manual_seed(seed)
    model = build_model({"nth_layer": 3, "target_transform": TRANSFORM, "wavlm_cfg": TINY_WAVLM})
    save_model(model, str(directory), TINY_WAVLM)
    return str(directory)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("aes"))


def stage_for(model_dir, **kwargs) -> AestheticsStage:
    stage = AestheticsStage(AestheticsConfig(model=model_dir, device="cpu", **kwargs))
    stage.setup()
    return stage


def test_saved_model_reloads_with_identical_outputs(model_dir):
    from audiobox_aesthetics.model.aes import AesMultiOutput

    model = load_model(model_dir)
    assert isinstance(model, AesMultiOutput)
    again = load_model(model_dir)
    wav = torch.randn(2, 1, 16000 * 2) * 0.1
    out1, out2 = model({"wav": wav}), again({"wav": wav})
    for axis in ("CE", "CU", "PC", "PQ"):
        assert torch.allclose(out1[axis], out2[axis])


def test_corrupt_weights_are_refused(tmp_path):
    from songmill.model.weights import WeightsMismatch

    folder = save_tiny(tmp_path / "m")
    from safetensors.torch import load_file, save_file

    state = load_file(f"{folder}/model.safetensors")
    state.pop(next(iter(state)))
    save_file(state, f"{folder}/model.safetensors")
    with pytest.raises(WeightsMismatch):
        load_model(folder)


def test_windows_cover_the_track_and_weight_the_padded_tail():
    audio = np.ones(16000 * 25, np.float32)
    wavs, masks, weights = windows(audio, 160000, 160000, 0)
    assert wavs.shape == (3, 160000)
    assert weights.tolist() == pytest.approx([1.0, 1.0, 0.5])
    assert masks[2, :80000].all() and not masks[2, 80000:].any()
    _, _, capped = windows(np.ones(16000 * 600, np.float32), 160000, 160000, 5)
    assert len(capped) == 5


def test_batched_windows_across_tracks_equal_one_track_at_a_time(model_dir):
    stage = stage_for(model_dir, window_batch=8)
    rng = np.random.default_rng(0)
    audios = [0.1 * rng.standard_normal(16000 * s).astype(np.float32) for s in (25, 7, 12)]
    together = stage.scores(audios)
    alone = [stage.scores([a])[0] for a in audios]
    for t, a in zip(together, alone, strict=True):
        for axis in ("CE", "CU", "PC", "PQ"):
            assert t[axis][0] == pytest.approx(a[axis][0], abs=1e-4)
            assert t[axis][2] == a[axis][2]
    # Different inputs give different scores (the masks and windows reach the model).
    assert together[0]["PQ"][0] != pytest.approx(together[1]["PQ"][0], abs=1e-6)


def test_scores_use_the_target_transform(model_dir):
    stage = stage_for(model_dir)
    model = stage.model
    wav = torch.from_numpy(
        0.1 * np.random.default_rng(1).standard_normal((1, 1, 160000)).astype(np.float32)
    )
    with torch.no_grad():
        raw = model({"wav": wav, "mask": torch.ones_like(wav, dtype=torch.bool)})
    score = stage.scores([wav[0, 0].numpy()])[0]
    for axis in ("CE", "PQ"):
        expected = float(raw[axis][0]) * TRANSFORM[axis]["std"] + TRANSFORM[axis]["mean"]
        assert score[axis][0] == pytest.approx(expected, abs=1e-4)


def test_stage_writes_scores_and_the_filter_is_queryable(tmp_path, corpus, model_dir):
    for i in range(3):
        write_audio(tmp_path / "in" / f"t{i}.wav", tone(3.0 + i, freq=220 * (i + 1), seed=i))
    ingest(corpus, [str(tmp_path / "in")])
    # Thresholds around the scores this model gives: some tracks pass and some fail.
    stage = stage_for(model_dir)
    scores = stage.scores(
        [tone(3.0 + i, sr=16000, channels=1, freq=220 * (i + 1), seed=i)[:, 0] for i in range(3)]
    )
    pq = sorted(s["PQ"][0] for s in scores)
    threshold = (pq[0] + pq[1]) / 2
    cfg = AestheticsConfig(model=model_dir, device="cpu", min_ce=0, min_cu=0, min_pq=threshold)
    [summary] = run_stages(corpus, [AestheticsStage(cfg)])
    assert summary.n_ok == 3 and summary.n_error == 0
    got = rows(corpus, "SELECT aes_pq, aesthetics_pass, aes_windows FROM manifest ORDER BY aes_pq")
    assert [r[1] for r in got] == [False, True, True]
    assert all(r[2] == 1 for r in got)
    passing = rows(corpus, "SELECT count(*) FROM manifest WHERE aesthetics_pass")
    assert passing == [(2,)]
    # Re-running does nothing: results are current.
    [again] = run_stages(corpus, [AestheticsStage(cfg)])
    assert again.n_input == 0
    # Later stages skip what fails the filter: `annotate --where aesthetics_pass`.
    from songmill.annotate.lyric_sections import LyricSectionsStage

    [later] = run_stages(corpus, [LyricSectionsStage(corpus=corpus)], where="aesthetics_pass")
    assert later.n_input == 2 and later.n_ok == 2


def test_missing_weights_write_retryable_errors_naming_the_fetch_command(
    tmp_path, corpus, monkeypatch
):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.delenv("SONGMILL_MODELS", raising=False)
    write_audio(tmp_path / "in" / "a.wav", tone(2.0))
    ingest(corpus, [str(tmp_path / "in")])
    [summary] = run_stages(corpus, [AestheticsStage(AestheticsConfig(device="cpu"))])
    assert summary.n_error == 1 and summary.unavailable
    [(message, retryable)] = rows(
        corpus, "SELECT message, retryable FROM errors WHERE stage = 'aesthetics'"
    )
    assert (
        retryable
        and "songmill models fetch audiobox-aesthetics" in message
        and "model.safetensors" in message
    )
