"""Flow matching: noising, timestep draws, masked loss, samplers, CFG, seeded generation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from songmill.model.conditions import Conditions
from songmill.model.config import preset
from songmill.model.dcae import MusicDCAE
from songmill.model.dit import DiTOutput, LinearDiT
from songmill.model.encoders import TextEncoder
from songmill.model.flow import (
    MomentumBuffer,
    SamplerSettings,
    acestep_sample,
    acestep_sigmas,
    add_noise,
    apg_guidance,
    euler_sample,
    flow_matching_loss,
    guidance_interval_steps,
    heun_sample,
    omega_rescale,
    sample,
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
        target = (
            torch.where(is_uncond, self.uncond_x0, self.x0)
            if self.uncond_x0 is not None
            else self.x0
        )
        noise = (x - (1 - sigma) * target) / sigma.clamp_min(1e-8)
        return DiTOutput(sample=noise - target)


def _cond(batch: int = 1) -> Conditions:
    return Conditions(
        torch.ones(batch, 2, 4),
        torch.ones(batch, 2, dtype=torch.bool),
        torch.ones(batch, 3, dtype=torch.long),
        torch.ones(batch, 3, dtype=torch.bool),
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
    cond = Conditions(
        emb,
        mask,
        torch.tensor([[5, 6, 7]]),
        torch.ones(1, 3, dtype=torch.bool),
        torch.zeros(1, 512),
    )

    def run(seed: int) -> torch.Tensor:
        noise = torch.randn(1, 8, 16, 9, generator=torch.Generator().manual_seed(seed))
        return heun_sample(dit, noise, cond, steps=3, guidance_scale=4.0)

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))


def test_generate_waveform_is_seeded_and_sized():
    dcae, dit, text_encoder = _tiny_models()
    vocoder = GriffinLimVocoder(n_iter=2)
    kwargs = dict(
        prompt="funk with slap bass", lyrics="la la la\nsing along", duration_s=0.5, steps=2
    )
    wav, sample_rate = generate(dcae, dit, text_encoder, vocoder, seed=7, **kwargs)
    assert sample_rate == 44100
    assert wav.shape == (2, 22050) and wav.dtype == torch.float32 and torch.isfinite(wav).all()
    again, _ = generate(dcae, dit, text_encoder, vocoder, seed=7, **kwargs)
    assert torch.equal(wav, again)
    other, _ = generate(dcae, dit, text_encoder, vocoder, seed=8, **kwargs)
    assert not torch.equal(wav, other)
    instrumental, _ = generate(
        dcae,
        dit,
        text_encoder,
        vocoder,
        prompt="drum solo",
        lyrics=None,
        duration_s=0.3,
        seed=1,
        steps=1,
    )
    assert instrumental.shape == (2, 13230)


# -- ACE-Step's sampler: APG, guidance interval, its sigma table, omega ---------------------------


def _reference_apg(
    cond: np.ndarray,
    uncond: np.ndarray,
    scale: float,
    running,
    momentum=-0.75,
    threshold=2.5,
    eta=0.0,
):
    """acestep/apg_guidance.py written out in numpy (float64): MomentumBuffer.update, the norm
    clip over the last two axes, the projection onto normalize(cond), cond + (scale - 1) * update."""
    diff = cond - uncond
    running = diff + momentum * running
    diff = running
    norm = np.sqrt((diff**2).sum(axis=(-1, -2), keepdims=True))
    diff = diff * np.minimum(1.0, threshold / norm)
    unit = cond / np.maximum(np.sqrt((cond**2).sum(axis=(-1, -2), keepdims=True)), 1e-12)
    parallel = (diff * unit).sum(axis=(-1, -2), keepdims=True) * unit
    return cond + (scale - 1) * ((diff - parallel) + eta * parallel), running


def test_apg_matches_hand_computed_values():
    buffer = MomentumBuffer(-0.75)
    # step 1: diff (3, 4) has norm 5 -> clipped to (1.5, 2), parallel to cond: no update
    first = apg_guidance(torch.tensor([[[[3.0, 4.0]]]]), torch.zeros(1, 1, 1, 2), 15.0, buffer)
    assert torch.allclose(first, torch.tensor([[[[3.0, 4.0]]]]))
    # step 2: diff (1, -1) + -0.75 * (3, 4) = (-1.25, -4), norm 4.190763 -> x 2.5 / 4.190763;
    # orthogonal to cond (1, 0): (0, -2.386202); cond + 14 * that
    second = apg_guidance(
        torch.tensor([[[[1.0, 0.0]]]]), torch.tensor([[[[0.0, 1.0]]]]), 15.0, buffer
    )
    assert torch.allclose(second, torch.tensor([[[[1.0, -33.40683]]]]), atol=1e-4)


def test_apg_matches_the_reference_formula_over_steps():
    rng = np.random.default_rng(0)
    buffer, running = MomentumBuffer(-0.75), 0.0
    for _ in range(4):
        cond, uncond = rng.standard_normal((2, 8, 16, 5)), rng.standard_normal((2, 8, 16, 5))
        expected, running = _reference_apg(cond, uncond, 15.0, running)
        got = apg_guidance(torch.from_numpy(cond), torch.from_numpy(uncond), 15.0, buffer)
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-10)
    # eta weighs the parallel part back in; no momentum: each step alone
    cond, uncond = rng.standard_normal((1, 8, 16, 5)), rng.standard_normal((1, 8, 16, 5))
    expected, _ = _reference_apg(cond, uncond, 5.0, 0.0, eta=0.5)
    got = apg_guidance(torch.from_numpy(cond), torch.from_numpy(uncond), 5.0, None, eta=0.5)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-10)


def test_acestep_sigmas_follow_the_reference_scheduler():
    # FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0), then set_timesteps(60)
    shift = 3.0
    train = np.linspace(1.0, 1000.0, 1000, dtype=np.float32)[::-1].copy() / 1000
    train = shift * train / (1 + (shift - 1) * train)
    timesteps = np.linspace(train[0] * 1000, train[-1] * 1000, 60) / 1000
    expected = np.append(shift * timesteps / (1 + (shift - 1) * timesteps), 0.0)
    got = acestep_sigmas(60, shift).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    assert len(got) == 61 and got[0] == 1.0 and got[-2] > 0.0


def test_guidance_interval_and_omega_as_the_pipeline():
    assert guidance_interval_steps(60, 0.5) == (15, 45) and guidance_interval_steps(60, 1.0) == (
        0,
        60,
    )
    dx = torch.tensor([1.0, 3.0])
    factor = float(0.9 + 0.2 / (1 + np.exp(-1.0)))  # logistic_function(10, L=0.9, U=1.1, k=0.1)
    assert torch.allclose(omega_rescale(dx, 10.0), torch.tensor([2 - factor, 2 + factor]))
    assert torch.equal(omega_rescale(dx, 0.0), dx)


class _CountingOracle(_OracleVelocity):
    def __init__(self, x0, uncond_x0=None):
        super().__init__(x0, uncond_x0)
        self.batches: list[int] = []

    def __call__(self, x, t, cond, frame_mask=None, return_repa=False):
        self.batches.append(x.shape[0])
        return super().__call__(x, t, cond, frame_mask, return_repa)


def test_acestep_sampler_guides_only_inside_the_interval():
    x0 = torch.randn(1, 8, 16, 4)
    oracle = _CountingOracle(x0, uncond_x0=x0)  # cond and uncond agree: guidance changes nothing
    out = acestep_sample(oracle, torch.randn(1, 8, 16, 4), _cond(), omega=0.0)
    assert oracle.batches == [1] * 15 + [2] * 30 + [1] * 15
    assert torch.allclose(out, x0, atol=1e-4)
    # with the release's omega 10 the end point moves away from the exact x0
    oracle = _CountingOracle(x0, uncond_x0=x0)
    assert not torch.allclose(
        acestep_sample(oracle, torch.randn(1, 8, 16, 4), _cond()), x0, atol=1e-3
    )


def test_generate_defaults_to_the_acestep_sampler():
    dcae, dit, text_encoder = _tiny_models()
    vocoder = GriffinLimVocoder(n_iter=1)
    kwargs = dict(prompt="funk", lyrics=None, duration_s=0.3, seed=3)
    calls = []
    hook = dit.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[0]))
    default, _ = generate(dcae, dit, text_encoder, vocoder, steps=8, **kwargs)
    hook.remove()
    assert calls == [1, 1, 2, 2, 2, 2, 1, 1]  # 8 steps, guidance interval 0.5
    explicit, _ = generate(
        dcae,
        dit,
        text_encoder,
        vocoder,
        steps=8,
        sampler=SamplerSettings.acestep(steps=8),
        **kwargs,
    )
    assert torch.equal(default, explicit)
    plain, _ = generate(dcae, dit, text_encoder, vocoder, steps=8, sampler="euler", **kwargs)
    assert not torch.equal(default, plain)


def test_unconditional_lyric_mask_follows_the_setting():
    seen = []

    class Recording(_OracleVelocity):
        def __call__(self, x, t, cond, frame_mask=None, return_repa=False):
            seen.append(cond.lyrics_mask.clone())
            return super().__call__(x, t, cond, frame_mask, return_repa)

    x0 = torch.randn(1, 8, 16, 4)
    for mode, expected in (("keep", True), ("zero", False)):
        seen.clear()
        sample(
            Recording(x0, x0),
            torch.randn(1, 8, 16, 4),
            _cond(),
            SamplerSettings(steps=2, uncond_lyric_mask=mode),
        )
        assert all(m[0].all() for m in seen)  # the conditional row keeps its lyrics
        assert all(bool(m[1].all()) == expected and bool(m[1].any()) == expected for m in seen)
