"""Parity with ACE-Step v1's own code, against fixtures made by its reference classes.

tests/fixtures/acestep/make_fixtures.py ran ACE-Step's ACEStepTransformer2DModel, music_log_mel,
AutoencoderDC and ADaMoS vocoder (tiny configs, seeded weights) and stored inputs and outputs;
here the same weights, written in the release layout, go through songmill's loaders.
Targets (fp32, CPU): DiT <= 1e-4, mel <= 1e-5 (on MKL's reproducible kernels), DCAE <= 1e-4,
vocoder <= 1e-4 max |diff|.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from songmill.model import acestep
from songmill.model.mel import log_mel

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "acestep"))
from release_layout import FIXTURES, fixture_io, load_manifest, release_dir  # noqa: E402
from seeded import checksum, seeded_state  # noqa: E402


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return release_dir(tmp_path_factory.mktemp("release"))


def test_fixture_weights_are_the_ones_the_reference_ran():
    # a changed random generator would show up here, not as a parity failure
    manifest = load_manifest()
    for part in ("dit", "dcae", "vocoder"):
        if part not in manifest:
            continue
        state = seeded_state(manifest[part]["shapes"], manifest["seed"])
        for key, value in state.items():
            assert checksum(value) == pytest.approx(
                manifest[part]["checksums"][key], rel=1e-6, abs=1e-6
            ), key


def test_dit_reference_forward_matches_acestep(release):
    io = fixture_io()
    dit = acestep.load_dit(release)
    inputs = {k[len("dit.in.") :]: v for k, v in io.items() if k.startswith("dit.in.")}
    # the padded frames of the second sample are part of the comparison: ACE-Step's masking
    assert inputs["attention_mask"][1].min() == 0
    with torch.no_grad():
        out = acestep.reference_forward(dit, **inputs)
    expected = io["dit.out.sample"]
    assert out.shape == expected.shape == inputs["hidden_states"].shape
    assert (out - expected).abs().max().item() <= 1e-4
    # the comparison can fail: one changed weight moves the output well past the target
    with torch.no_grad():
        dit.transformer_blocks[1].attn.to_v.weight[0, 0] += 0.5
        moved = acestep.reference_forward(dit, **inputs)
    assert (moved - expected).abs().max().item() > 1e-3


def test_dit_parity_needs_the_release_details(release):
    """Each of the fixed differences alone breaks parity (so the test sees each one)."""
    from songmill.model.config import DiTConfig
    from songmill.model.dit import LinearDiT

    io = fixture_io()
    inputs = {k[len("dit.in.") :]: v for k, v in io.items() if k.startswith("dit.in.")}
    good = acestep.load_dit(release)
    for change in (
        {"rope_layout": "half"},
        {"cross_attention_rope": False},
        {"rope_theta": 1e4},
        {"output_order": "channel_row"},
    ):
        dit = LinearDiT(DiTConfig.from_dict({**good.cfg.to_dict(), **change}))
        dit.load_state_dict(good.state_dict())
        with torch.no_grad():
            out = acestep.reference_forward(dit.eval(), **inputs)
        assert (out - io["dit.out.sample"]).abs().max().item() > 1e-3, change


def _mel_parity() -> dict[str, float]:
    io = fixture_io()
    mel, reference = log_mel(io["mel.in.audio"]).double(), io["mel.out.mel"].double()
    energy, reference_energy = mel.exp(), reference.exp()
    peak = reference_energy.amax(dim=-2, keepdim=True)  # each frame's loudest band
    return {
        "log": (mel - reference).abs().max().item(),
        "energy_vs_peak": ((energy - reference_energy).abs() / peak).max().item(),
        "shape_equal": float(mel.shape == reference.shape),
    }


def test_log_mel_matches_music_log_mel_on_mkl_reproducible_kernels():
    """Bit-level parity: MKL picks FFT kernels by CPU, and in the quietest bands (e^-10 under a
    peak near e^2) their fp32 rounding moves the log by up to 1e-3 (the reference's own fp32
    result is 1e-3 from fp64 there). MKL_CBWR=COMPATIBLE is its documented CPU-independent path,
    set before MKL starts, so in a fresh interpreter."""
    import json
    import os
    import subprocess

    code = (
        "import json, sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]; "
        "from test_acestep_parity import _mel_parity; print(json.dumps(_mel_parity()))"
    )
    env = {**os.environ, "MKL_CBWR": "COMPATIBLE"}
    out = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent), str(FIXTURES)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert figures["shape_equal"] == 1.0
    assert figures["log"] <= 1e-5, figures


def test_log_mel_matches_music_log_mel_within_fp32_rounding_on_any_kernels():
    figures = _mel_parity()
    assert figures["shape_equal"] == 1.0
    # fp32 STFT rounding is ~1e-7 of a frame's energy; a real difference (no sqrt epsilon: 8e-6,
    # f_max 15.9 kHz: 0.1) is well above 4e-6
    assert figures["energy_vs_peak"] <= 4e-6, figures


def test_fixtures_stay_small():
    total = sum(p.stat().st_size for p in FIXTURES.iterdir() if p.is_file())
    assert total < 600_000, total


def test_dcae_encode_and_decode_match_music_dcae(release):
    io = fixture_io()
    dcae = acestep.load_dcae(release)
    with torch.no_grad():
        latent = dcae.encode_audio(io["mel.in.audio"][None])
        decoded = dcae.decode(io["dcae.out.latent"])
    assert latent.shape == io["dcae.out.latent"].shape == (1, 8, 16, 2)
    assert (latent - io["dcae.out.latent"]).abs().max().item() <= 1e-4
    assert decoded.shape == io["dcae.out.log_mel"].shape
    assert (decoded - io["dcae.out.log_mel"]).abs().max().item() <= 1e-4
    # the fixed latent constants are part of it: statistics-based scaling would not match
    assert dcae.dcae.latent_shift.item() == pytest.approx(-1.9091)
    assert dcae.dcae.latent_scale.item() == pytest.approx(0.1786)


def test_vocoder_matches_adamos_and_the_whole_decode_path(release):
    io = fixture_io()
    vocoder = acestep.load_vocoder(release)
    with torch.no_grad():
        audio = vocoder(io["vocoder.in.mel"])
        # MusicDCAE.decode: DCAE decoder, then the vocoder one channel at a time
        log_mel = acestep.load_dcae(release).decode(io["dcae.out.latent"])
        stereo = torch.cat([vocoder(log_mel[:, c]) for c in range(2)], dim=1)[0]
    assert audio.shape == io["vocoder.out.audio"].shape
    assert (audio - io["vocoder.out.audio"]).abs().max().item() <= 1e-4
    assert (stereo - io["dcae.out.audio"]).abs().max().item() <= 1e-4


def test_vocoder_derived_buffers_equal_the_release_ones():
    # the release stores its mel front end's window and Slaney filterbank with the vocoder
    manifest = load_manifest()["vocoder"]
    cfg = acestep.vocoder_config_from_release(manifest["release_config"])
    for key, value in acestep.vocoder_derived_buffers(cfg).items():
        assert list(value.shape) == manifest["derived_shapes"][key]
        assert checksum(value) == pytest.approx(manifest["derived_checksums"][key], rel=1e-5), key


def test_full_size_release_maps_key_for_key():
    """The release's own configs (acestep/models/config.json, the vocoder's defaults) at full size:
    songmill builds the same keys and shapes (shapes as ACE-Step's classes made them, no weights)."""
    from songmill.model.adamos import ADaMoSHiFiGAN
    from songmill.model.dit import LinearDiT

    shapes = load_manifest()["release_shapes"]
    transformer = shapes["ace_step_transformer"]
    tensors = {k: torch.empty(v, device="meta") for k, v in transformer["shapes"].items()}
    cfg = acestep.dit_config_from_release(transformer["config"], tensors)
    state, unused = acestep.split_release_dit(tensors, cfg)  # raises on any key / shape difference
    assert (cfg.width, cfg.depth, cfg.heads, cfg.head_dim, cfg.ffn_ratio) == (
        2560,
        24,
        20,
        128,
        2.5,
    )
    assert (cfg.lyrics.width, cfg.lyrics.depth, cfg.lyrics.heads, cfg.lyrics.vocab_size) == (
        1024,
        6,
        16,
        6693,
    )
    assert (
        cfg.repa_block == 9
        and cfg.repa_targets == {"mert": 1024, "mhubert": 768}
        and cfg.patch_hidden == 2048
    )
    assert len(unused) == 24 * 8
    assert acestep.acestep_incompatibilities(cfg) == ([], [])
    # the base preset is the release's DiT
    from songmill.model.config import preset

    base = preset("base").dit
    with torch.device("meta"):
        base_state = LinearDiT(base).state_dict()
    assert {k: tuple(v.shape) for k, v in base_state.items()} == {
        k: tuple(v.shape) for k, v in state.items()
    }
    vocoder = shapes["music_vocoder"]
    vocoder_cfg = acestep.vocoder_config_from_release(vocoder["config"])
    with torch.device("meta"):
        ours = ADaMoSHiFiGAN(vocoder_cfg).state_dict()
    theirs = {k: torch.empty(v, device="meta") for k, v in vocoder["shapes"].items()}
    acestep.check_keys(
        "music_vocoder", ours, acestep.vocoder_state_from_release(theirs, vocoder_cfg)
    )
