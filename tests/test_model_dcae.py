"""Music DCAE: f8c8 shapes, latent rate, shortcuts, masking of the frame padding, overfitting."""

from __future__ import annotations

import pytest
import torch
from songmill.model.config import DCAEConfig, MelConfig, preset
from songmill.model.dcae import DownStep, MusicDCAE, UpStep, pad_to_multiple


def _tiny(seed: int = 0) -> MusicDCAE:
    torch.manual_seed(seed)
    return MusicDCAE(preset("tiny").dcae)


def test_round_trip_shapes_and_padding():
    dcae = _tiny()
    mel = torch.rand(2, 2, 128, 45) * 2 - 1
    recon, latent = dcae(mel)
    assert latent.shape == (2, 8, 16, 6)  # ceil(45 / 8)
    assert recon.shape == mel.shape
    assert dcae.decode(latent).shape == (2, 2, 128, 48)
    assert pad_to_multiple(mel, 8).shape[-1] == 48
    assert torch.all(pad_to_multiple(mel, 8)[..., 45:] == -1.0)
    assert pad_to_multiple(mel[..., :40], 8).shape[-1] == 40


def test_latent_rate_is_10_77_frames_per_second():
    dcae = _tiny()
    mel_cfg = MelConfig()
    seconds = 3.0
    frames = int(seconds * mel_cfg.sample_rate) // mel_cfg.hop_length + 1
    with torch.no_grad():
        latent = dcae.encode(torch.zeros(1, 2, 128, frames))
    assert latent.shape[1:3] == (8, 16)
    rate = latent.shape[-1] / seconds
    assert rate == pytest.approx(10.77, abs=0.4)  # ceil() adds at most one frame in 3 s
    assert mel_cfg.frames_per_second / dcae.factor == pytest.approx(10.77, abs=0.01)
    # 240 s -> 2584 latent frames, as in ACE-Step
    assert dcae.latent_frames(240 * 44100 // 512 + 1) == 2584


def test_space_to_channel_shortcuts_are_exact_rearrangements():
    down = DownStep(4, 8)
    up = UpStep(8, 4)
    for module in (down.conv, up.conv):
        torch.nn.init.zeros_(module.weight)
        torch.nn.init.zeros_(module.bias)
    x = torch.randn(1, 4, 6, 10)
    y = down(x)
    assert y.shape == (1, 8, 3, 5)
    # channel c averages 2 of the 16 unshuffled (channel, dy, dx) values
    unshuffled = torch.nn.functional.pixel_unshuffle(x, 2)
    assert torch.allclose(y[:, 0], unshuffled[:, :2].mean(dim=1))
    z = up(y)
    assert z.shape == (1, 4, 6, 10)
    assert torch.allclose(z, torch.nn.functional.pixel_shuffle(y.repeat_interleave(2, dim=1), 2))


def test_latent_stats_normalise_the_latent():
    dcae = _tiny()
    mel = torch.rand(3, 2, 128, 32) * 2 - 1
    with torch.no_grad():
        dcae.set_latent_stats(dcae.encode_raw(mel))
        latent = dcae.encode(mel)
        assert latent.mean().abs() < 1e-4 and (latent.std() - 1).abs() < 1e-4
        # decode undoes the normalisation: same mel as decoding the raw latent by hand
        raw = dcae.encode_raw(mel)
        assert torch.allclose(dcae.decode(latent), dcae.decoder(raw), atol=1e-4)


def test_bf16_matches_fp32():
    dcae = _tiny()
    mel = torch.rand(1, 2, 128, 32) * 2 - 1
    with torch.no_grad():
        ref_recon, ref_latent = dcae(mel)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            recon, latent = dcae(mel)
    assert recon.dtype == torch.bfloat16  # really ran in bf16
    scale = ref_latent.abs().mean()
    assert (latent.float() - ref_latent).abs().mean() < 0.05 * scale
    assert (recon.float() - ref_recon).abs().mean() < 0.05 * ref_recon.abs().mean()


def test_tiny_dcae_overfits_one_batch():
    dcae = _tiny()
    generator = torch.Generator().manual_seed(1)
    # a smooth "spectrogram": low-rank structure the autoencoder can learn quickly
    rows = torch.linspace(-1, 1, 128)
    cols = torch.rand(1, 2, 1, 24, generator=generator)
    mel = (torch.cos(3 * rows)[None, None, :, None] * cols).clamp(-1, 1)
    optimizer = torch.optim.AdamW(dcae.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        recon, _ = dcae(mel)
        loss = torch.nn.functional.mse_loss(recon, mel)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0], (losses[0], losses[-1])


def test_base_preset_matches_ace_step_layout():
    cfg = preset("base").dcae
    assert cfg.widths == (128, 256, 512, 1024)
    assert cfg.encoder_depths == (2, 2, 3, 3) and cfg.decoder_depths == (3, 3, 3, 3)
    # the release's stage types and fixed latent constants (music_dcae_f8c8, music_dcae_pipeline)
    assert cfg.block_types == ("res", "res", "res", "vit")
    assert (cfg.latent_shift, cfg.latent_scale) == (-1.9091, 0.1786)
    assert DCAEConfig.from_dict(cfg.to_dict()) == cfg
    with torch.device("meta"):
        dcae = MusicDCAE(cfg)
    latent = dcae.encode(torch.empty(1, 2, 128, 64, device="meta"))
    assert latent.shape == (1, 8, 16, 8)
    # diffusers' AutoencoderDC names, so the release's weights map key for key
    names = set(dcae.state_dict())
    assert "encoder.down_blocks.3.0.attn.to_qkv_multiscale.0.proj_in.weight" in names
    assert "decoder.up_blocks.0.0.conv.weight" in names and "decoder.norm_out.bias" in names
