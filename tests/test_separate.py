"""The separate stage with a tiny randomly initialised HTDemucs saved and loaded the way the real
checkpoints are (a pickled demucs package `<sig>-<sha256 prefix>.th` plus a bag yaml)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
from conftest import tone, write_audio
from songmill.annotate.base import StageUnavailable, Track
from songmill.annotate.ingest import ingest
from songmill.annotate.runner import run_stages
from songmill.annotate.separate import SeparateConfig, SeparateStage, load_demucs, vocal_activity

torch = pytest.importorskip("torch")
pytest.importorskip("demucs")

SOURCES = ["drums", "bass", "other", "vocals"]


def tiny_htdemucs(seed: int = 0):
    from demucs.htdemucs import HTDemucs

    torch.manual_seed(seed)
    return HTDemucs(
        sources=SOURCES, channels=4, depth=3, nfft=2048, t_layers=1, t_heads=2,
        t_hidden_scale=1.0, dconv_comp=2, segment=2,
    ).eval()  # fmt: skip


def save_package(model, path) -> None:
    """What demucs' training writes (states.serialize_model), via its save_with_checksum."""
    from demucs.states import save_with_checksum

    args, kwargs = model._init_args_kwargs
    package = {"klass": type(model), "args": args, "kwargs": kwargs, "state": model.state_dict()}
    save_with_checksum(package, path)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demucs")
    save_package(tiny_htdemucs(), folder / "0tiny0sig.th")
    (folder / "tinybag.yaml").write_text("models: ['0tiny0sig']\n")
    return folder


@pytest.fixture
def no_caches(tmp_path, monkeypatch):
    """Empty torch hub and Hugging Face caches, whatever this machine holds."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)


def test_bag_loads_through_demucs_loaders_with_checksum(model_dir):
    from demucs.apply import BagOfModels, apply_model

    (saved,) = model_dir.glob("0tiny0sig-*.th")  # the sha256 prefix went into the name
    bag = load_demucs("tinybag", str(model_dir))
    assert isinstance(bag, BagOfModels) and bag.sources == SOURCES
    mix = torch.randn(1, 2, 44100)
    with torch.inference_mode():
        expected = apply_model(tiny_htdemucs(), mix, shifts=0, split=True)
        got = apply_model(bag, mix, shifts=0, split=True)
    assert torch.allclose(expected, got, atol=1e-5)
    single = load_demucs(str(saved))  # a path to one checkpoint works too
    assert single.sources == SOURCES


def test_corrupt_checkpoint_is_refused(tmp_path):
    from demucs.repo import ModelLoadingError

    save_package(tiny_htdemucs(), tmp_path / "0bad0sig.th")
    (path,) = tmp_path.glob("0bad0sig-*.th")
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelLoadingError, match="checksum"):
        load_demucs("0bad0sig", str(tmp_path))


def test_missing_weights_name_the_file_and_the_url(tmp_path, no_caches, corpus):
    stage = SeparateStage(
        SeparateConfig(model="htdemucs", model_dir=str(tmp_path / "models")), corpus=corpus
    )
    with pytest.raises(StageUnavailable) as info:
        stage.setup()
    message = str(info.value)
    assert str(tmp_path / "models" / "955717e8-8726e21a.th") in message
    assert (
        "https://dl.fbaipublicfiles.com/demucs/hybrid_transformer/955717e8-8726e21a.th" in message
    )


def test_vocal_activity_counts_frames_where_the_voice_sounds():
    sr = 8000
    music = 0.1 * np.random.default_rng(0).standard_normal((sr * 4, 2)).astype(np.float32)
    vocals = np.zeros_like(music)
    vocals[sr : 2 * sr] = 0.2 * np.sin(2 * np.pi * 220 * np.arange(sr) / sr)[:, None]  # 1 of 4 s
    mix = music + vocals
    assert vocal_activity(vocals, mix, sr, -50, 15) == pytest.approx(0.25, abs=0.02)
    assert vocal_activity(np.zeros_like(music), music, sr, -50, 15) == 0.0
    bleed = 0.01 * music  # 40 dB under the mix: leakage, not a voice
    assert vocal_activity(bleed, music + bleed, sr, -50, 15) == 0.0


def test_stage_writes_flac_stems_and_rows_through_the_runner(tmp_path, corpus, model_dir):
    src = tmp_path / "src"
    write_audio(src / "a.wav", tone(3.0, sr=44100, freq=330, seed=1))
    write_audio(src / "b.flac", tone(2.0, sr=22050, channels=1, freq=440, seed=2)[:, 0], sr=22050)
    write_audio(src / "broken.wav", tone(1.0))
    (src / "broken.wav").write_bytes(b"RIFF not really a wav")
    ingest(corpus, [str(src)])
    stage = SeparateStage(
        SeparateConfig(model="tinybag", model_dir=str(model_dir), shifts=1), corpus=corpus
    )
    (summary,) = run_stages(corpus, [stage])
    assert (summary.n_ok, summary.unavailable) == (2, None)

    rows = corpus.sql(
        "SELECT s.*, t.duration_s FROM separation s JOIN tracks t USING (track_id)"
    ).to_pylist()
    assert len(rows) == 2
    for row in rows:
        assert row["model"] == "tinybag" and row["sample_rate"] == 44100
        assert f"/stems/{row['track_id'][:2]}/{row['track_id']}/" in row["vocals_uri"]
        for uri in (row["vocals_uri"], row["accompaniment_uri"]):
            with open(uri, "rb") as f:
                data, sr = sf.read(io.BytesIO(f.read()), dtype="float32")
            assert sr == 44100 and data.shape == (
                round(row["duration_s"] * 44100),
                2,
            )  # mono in, stereo out
            assert np.isfinite(data).all()
        assert 0.0 <= row["vocal_activity_ratio"] <= 1.0 and row["vocal_energy_ratio"] >= 0.0
        assert row["is_instrumental"] == (row["vocal_activity_ratio"] < 0.05)
    manifest = corpus.sql(
        "SELECT track_id, is_instrumental, vocals_uri FROM manifest WHERE vocals_uri IS NOT NULL"
    )
    assert manifest.num_rows == 2

    # Re-running skips the tracks that are done.
    (again,) = run_stages(corpus, [stage])
    assert again.n_input == 0


def test_batched_tracks_keep_their_own_lengths(model_dir, corpus):
    """Tracks of similar length go through as one zero-padded batch: the longest sees exactly
    what it sees alone; a shorter one sits at another offset within its chunk (the kind of
    shift demucs' own `shifts` averages over), and gets back stems of its own length."""
    rng = np.random.default_rng(3)
    audios = [0.1 * rng.standard_normal((n, 2)).astype(np.float32) for n in (44100, 40000)]
    one = SeparateStage(
        SeparateConfig(model="tinybag", model_dir=str(model_dir), shifts=0, batch_tracks=1),
        corpus=corpus,
    )
    two = SeparateStage(
        SeparateConfig(model="tinybag", model_dir=str(model_dir), shifts=0, batch_tracks=2),
        corpus=corpus,
    )
    one.setup()
    two.setup()
    batched = two._separate(audios, ["a", "b"])
    ((alone_vocals, alone_accompaniment),) = one._separate([audios[0]], ["a"])
    assert np.abs(batched[0][0] - alone_vocals).max() < 1e-4
    assert np.abs(batched[0][1] - alone_accompaniment).max() < 1e-4
    for audio, (vocals, accompaniment) in zip(audios, batched, strict=True):
        assert vocals.shape == accompaniment.shape == audio.shape
        assert np.isfinite(vocals).all() and np.abs(vocals).max() > 0


def test_undecodable_track_fails_alone(model_dir, corpus, tmp_path):
    stage = SeparateStage(
        SeparateConfig(model="tinybag", model_dir=str(model_dir), shifts=0), corpus=corpus
    )
    good_path = write_audio(tmp_path / "good.wav", tone(1.0, seed=5))
    bad_path = tmp_path / "bad.wav"
    bad_path.write_bytes(b"nothing")
    tracks = [
        Track({"track_id": "bad0", "uri": str(bad_path)}),
        Track({"track_id": "good", "uri": good_path}),
    ]
    bad, good = stage.process(tracks)
    assert isinstance(bad, Exception)
    assert good["vocals_uri"].endswith("-vocals.flac")
