"""Flow matching: noising, timestep draws, masked loss, samplers, CFG, seeded generation."""

from __future__ import annotations

import pytest
import torch
from songmill.model.conditions import Conditions
from songmill.model.config import preset
from songmill.model.dcae import MusicDCAE
from songmill.model.dit import DiTOutput, LinearDiT
from songmill.model.encoders import TextEncoder
from songmill.model.flow import (
    add_noise,
    euler_sample,
    flow_matching_loss,
    heun_sample,
    sample_sigmas,
    sampling_sigmas,
)
from songmill.model.generate import generate
from songmill.model.mel import GriffinLimVocoder


def test_add_noise_interpolates_between_data_and_noise():
    x0, noise = torch.randn(3, 8, 16, 5), torch.randn(3, 8, 16, 5)
    sigma = torch.tensor([0.0, 0.25, 1.0])
    xt = add_noise(x0, noise, sigma)
    assert torch.equal(xt[0], x0[0]) and torch.equal(xt[2], noise[2])
    assert torch.allclose(xt[1], 0.25 * noise[1] + 0.75 * x0[1])


def test_sigma_draws_logit_normal_with_shift():
    plain = sample_sigmas(20000, shift=1.0, generator=torch.Generator().manual_seed(0))
    shifted = sample_sigmas(20000, shift=3.0, generator=torch.Generator().manual_seed(0))
    assert plain.min() > 0 and plain.max() < 1
    assert plain.median().item() == pytest.approx(0.5, abs=0.02)  # logit-normal(0, 1) median
    # shift 3 maps the median 0.5 to 0.75 and pushes mass towards noise
    assert shifted.median().item() == pytest.approx(0.75, abs=0.02)
    assert torch.all(shifted >= plain)
    again = sample_sigmas(20000, shift=3.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again, shifted)


def test_loss_targets_velocity_and_ignores_padded_frames():
    x0, noise = torch.randn(2, 8, 16, 10), torch.randn(2, 8, 16, 10)
    perfect = noise - x0
    assert flow_matching_loss(perfect, x0, noise) == 0
    wrong_in_padding = perfect.clone()
    wrong_in_padding[1, ..., 6:] += 5.0
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 6:] = False
    assert flow_matching_loss(wrong_in_padding, x0, noise, mask) == 0
    assert flow_matching_loss(wrong_in_padding, x0, noise) > 1.0
    # mean over real elements: one unit error everywhere gives exactly 1
    assert flow_matching_loss(perfect + 1.0, x0, noise, mask).item() == pytest.approx(1.0)


class _OracleVelocity:
    """The exact velocity of the straight path towards a known x0 (the ideal denoiser)."""

    def __init__(self, x0: torch.Tensor, uncond_x0: torch.Tensor | None = None) -> None:
        self.x0, self.uncond_x0 = x0, uncond_x0
        self.calls = 0

    def __call__(self, x, t, cond, frame_mask=None, return_repa=False):
        self.calls += 1
        sigma = t.reshape(-1, 1, 1, 1)
        # rows whose speaker is zero are the unconditional half
        is_uncond = (cond.speaker.abs().sum(dim=1) == 0).reshape(-1, 1, 1, 1)
        target = torch.where(is_uncond, self.uncond_x0, self.x0) if self.uncond_x0 is not None else self.x0
        noise = (x - (1 - sigma) * target) / sigma.clamp_min(1e-8)
        return DiTOutput(sample=noise - target)


def _cond(batch: int = 1) -> Conditions:
    return Conditions(
        torch.ones(batch, 2, 4), torch.ones(batch, 2, dtype=torch.bool),
        torch.ones(batch, 3, dtype=torch.long), torch.ones(batch, 3, dtype=torch.bool),
        torch.ones(batch, 512),
    )


@pytest.mark.parametrize("sampler", [euler_sample, heun_sample])
def test_samplers_recover_x0_under_the_exact_velocity(sampler):
    x0 = torch.randn(1, 8, 16, 6)
    oracle = _OracleVelocity(x0)
    out = sampler(oracle, torch.randn(1, 8, 16, 6), _cond(), steps=5, guidance_scale=1.0)
    assert torch.allclose(out, x0, atol=1e-4)
    expected_calls = 5 if sampler is euler_sample else 9  # Heun: 2 per step, last step Euler
    assert oracle.calls == expected_calls


def test_guidance_extrapolates_from_unconditional():
    x0_cond, x0_uncond = torch.ones(1, 8, 16, 4), torch.zeros(1, 8, 16, 4)
    oracle = _OracleVelocity(x0_cond, x0_uncond)
    out = euler_sample(oracle, torch.randn(1, 8, 16, 4), _cond(), steps=4, guidance_scale=3.0)
    # linear paths: the guided end point is x0_u + g (x0_c - x0_u)
    assert torch.allclose(out, torch.full_like(out, 3.0), atol=1e-4)


def test_sampling_schedule_runs_from_noise_to_data():
    sigmas = sampling_sigmas(27, shift=3.0)
    assert len(sigmas) == 28 and sigmas[0] == 1.0 and sigmas[-1] == 0.0
    assert torch.all(sigmas[1:] < sigmas[:-1])


def _tiny_models():
    cfg = preset("tiny")
    torch.manual_seed(0)
    dcae, dit = MusicDCAE(cfg.dcae).eval(), LinearDiT(cfg.dit).eval()
    # the DiT starts with zero output (and AdaLN) projections: give them weights, so the
    # prediction depends on its inputs
    for module in dit.modules():
        if isinstance(module, torch.nn.Linear) and not module.weight.any():
            torch.nn.init.normal_(module.weight, std=0.05)
    return dcae, dit, TextEncoder.tiny_random(cfg.text)


def test_seeded_sampling_is_deterministic():
    _, dit, text_encoder = _tiny_models()
    emb, mask = text_encoder(["ambient drone"])
    cond = Conditions(emb, mask, torch.tensor([[5, 6, 7]]), torch.ones(1, 3, dtype=torch.bool), torch.zeros(1, 512))

    def run(seed: int) -> torch.Tensor:
        noise = torch.randn(1, 8, 16, 9, generator=torch.Generator().manual_seed(seed))
        return heun_sample(dit, noise, cond, steps=3, guidance_scale=4.0)

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


def test_generate_waveform_is_seeded_and_sized():
    dcae, dit, text_encoder = _tiny_models()
    vocoder = GriffinLimVocoder(n_iter=2)
    kwargs = dict(prompt="funk with slap bass", lyrics="la la la\nsing along", duration_s=0.5, steps=2)
    wav, sample_rate = generate(dcae, dit, text_encoder, vocoder, seed=7, **kwargs)
    assert sample_rate == 44100
    assert wav.shape == (2, 22050) and wav.dtype == torch.float32 and torch.isfinite(wav).all()
    again, _ = generate(dcae, dit, text_encoder, vocoder, seed=7, **kwargs)
    assert torch.equal(wav, again)
    other, _ = generate(dcae, dit, text_encoder, vocoder, seed=8, **kwargs)
    assert not torch.equal(wav, other)
    instrumental, _ = generate(
        dcae, dit, text_encoder, vocoder, prompt="drum solo", lyrics=None, duration_s=0.3, seed=1, steps=1
    )
    assert instrumental.shape == (2, 13230)
