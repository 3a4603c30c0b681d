"""Rectified-flow matching: noising, timestep draws, the loss, Euler / Heun samplers with CFG.

x_t = sigma * noise + (1 - sigma) * x0; the network predicts the velocity v = noise - x0, so
dx/dsigma = v and sampling integrates from sigma = 1 (pure noise) down to 0.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from songmill.model.conditions import Conditions, concat_conditions, null_conditions

Denoiser = Callable[..., object]


def shift_sigmas(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3 timestep shift: spends more of the schedule at high noise when shift > 1."""
    return shift * sigma / (1.0 + (shift - 1.0) * sigma)


def sample_sigmas(
    batch: int,
    shift: float = 3.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    mean: float = 0.0,
    std: float = 1.0,
) -> torch.Tensor:
    """(B,) training sigmas: logit-normal draw, then shifted."""
    u = torch.randn(batch, generator=generator) * std + mean
    return shift_sigmas(torch.sigmoid(u), shift).to(device)


def _expand(sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return sigma.to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    s = _expand(sigma, x0)
    return s * noise + (1.0 - s) * x0


def flow_matching_loss(
    model_out: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, frame_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """MSE against the velocity target noise - x0, averaged over real frames only."""
    err = (model_out.float() - (noise.float() - x0.float())) ** 2  # (B, C, H, F)
    if frame_mask is None:
        return err.mean()
    weights = frame_mask.to(err.dtype)[:, None, None, :].expand_as(err)
    return (err * weights).sum() / weights.sum().clamp_min(1.0)


def sampling_sigmas(steps: int, shift: float = 3.0, device: torch.device | str | None = None) -> torch.Tensor:
    """steps + 1 decreasing sigmas from 1 to 0, shifted."""
    return shift_sigmas(torch.linspace(1.0, 0.0, steps + 1, device=device), shift)


def _velocity(
    model: Denoiser,
    x: torch.Tensor,
    sigma: float,
    cond: Conditions,
    uncond: Conditions | None,
    frame_mask: torch.Tensor | None,
    guidance_scale: float,
) -> torch.Tensor:
    batch = x.shape[0]
    if uncond is None or guidance_scale == 1.0:
        t = torch.full((batch,), sigma, device=x.device)
        return _sample_of(model(x, t, cond, frame_mask, return_repa=False))
    # conditional and unconditional halves in one batch
    both = concat_conditions([cond, uncond])
    mask = None if frame_mask is None else torch.cat([frame_mask, frame_mask])
    t = torch.full((2 * batch,), sigma, device=x.device)
    out = _sample_of(model(torch.cat([x, x]), t, both, mask, return_repa=False))
    v_cond, v_uncond = out.chunk(2)
    return v_uncond + guidance_scale * (v_cond - v_uncond)


def _sample_of(out: object) -> torch.Tensor:
    return out.sample if hasattr(out, "sample") else out  # type: ignore[return-value]


def _prepare(cond: Conditions, uncond: Conditions | None, guidance_scale: float) -> Conditions | None:
    if guidance_scale == 1.0:
        return None
    return uncond if uncond is not None else null_conditions(cond)


@torch.no_grad()
def _integrate(
    model: Denoiser,
    noise: torch.Tensor,
    cond: Conditions,
    steps: int,
    guidance_scale: float,
    uncond: Conditions | None,
    frame_mask: torch.Tensor | None,
    shift: float,
    heun: bool,
) -> torch.Tensor:
    """Integrate dx/dsigma = v from sigma 1 to 0; Heun adds a trapezoidal corrector to each Euler
    step except the last one, to sigma 0."""
    uncond = _prepare(cond, uncond, guidance_scale)
    sigmas = sampling_sigmas(steps, shift).tolist()
    x = noise
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        v = _velocity(model, x, sigma, cond, uncond, frame_mask, guidance_scale)
        x_euler = x + (sigma_next - sigma) * v
        if not heun or sigma_next == 0.0:
            x = x_euler
            continue
        v_next = _velocity(model, x_euler, sigma_next, cond, uncond, frame_mask, guidance_scale)
        x = x + (sigma_next - sigma) * 0.5 * (v + v_next)
    return x


def euler_sample(
    model: Denoiser,
    noise: torch.Tensor,
    cond: Conditions,
    steps: int = 27,
    guidance_scale: float = 7.0,
    uncond: Conditions | None = None,
    frame_mask: torch.Tensor | None = None,
    shift: float = 3.0,
) -> torch.Tensor:
    """`steps` Euler steps from sigma 1 to 0; returns x0."""
    return _integrate(model, noise, cond, steps, guidance_scale, uncond, frame_mask, shift, heun=False)


def heun_sample(
    model: Denoiser,
    noise: torch.Tensor,
    cond: Conditions,
    steps: int = 27,
    guidance_scale: float = 7.0,
    uncond: Conditions | None = None,
    frame_mask: torch.Tensor | None = None,
    shift: float = 3.0,
) -> torch.Tensor:
    """Heun's second-order method (trapezoidal corrector); the last step to sigma 0 is Euler."""
    return _integrate(model, noise, cond, steps, guidance_scale, uncond, frame_mask, shift, heun=True)
