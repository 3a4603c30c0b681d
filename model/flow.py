"""Rectified-flow matching: noising, timestep draws, the losses, Euler / Heun samplers with plain
CFG or ACE-Step's APG guidance.

x_t = sigma * noise + (1 - sigma) * x0; the network predicts the velocity v = noise - x0, so
dx/dsigma = v and sampling integrates from sigma = 1 (pure noise) down to 0.

ACE-Step v1 (github ace-step/ACE-Step) is the reference for `x0_space_loss` (trainer.py),
`apg_guidance` (acestep/apg_guidance.py), `acestep_sigmas` and the omega rescale of each Euler
step (acestep/schedulers/scheduling_flow_match_euler_discrete.py) and the guidance interval
(acestep/pipeline_ace_step.py); `SamplerSettings.acestep()` is that release's text2music sampler.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

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


def _masked_mean(err: torch.Tensor, frame_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of (B, C, H, F) errors over real frames only."""
    if frame_mask is None:
        return err.mean()
    weights = frame_mask.to(err.dtype)[:, None, None, :].expand_as(err)
    return (err * weights).sum() / weights.sum().clamp_min(1.0)


def flow_matching_loss(
    model_out: torch.Tensor,
    x0: torch.Tensor,
    noise: torch.Tensor,
    frame_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """MSE against the velocity target noise - x0, averaged over real frames only."""
    err = (model_out.float() - (noise.float() - x0.float())) ** 2  # (B, C, H, F)
    return _masked_mean(err, frame_mask)


def x0_space_loss(
    model_out: torch.Tensor,
    noisy: torch.Tensor,
    x0: torch.Tensor,
    sigma: torch.Tensor,
    frame_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """ACE-Step's objective: the predicted velocity becomes x0_hat = x_t - sigma * v (its
    "preconditioning of the model outputs"), and the loss is MSE(x0_hat, x0) over real frames.
    Since x_t - sigma * v - x0 = sigma * ((noise - x0) - v), this is the velocity loss weighted
    by sigma^2 per sample: the low-noise steps count less."""
    s = _expand(sigma, model_out).float()
    x0_hat = noisy.float() - s * model_out.float()
    return _masked_mean((x0_hat - x0.float()) ** 2, frame_mask)


def denoising_loss(
    space: str,
    model_out: torch.Tensor,
    noisy: torch.Tensor,
    x0: torch.Tensor,
    noise: torch.Tensor,
    sigma: torch.Tensor,
    frame_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The training loss in `space`: "x0" (ACE-Step) or "velocity"."""
    if space == "x0":
        return x0_space_loss(model_out, noisy, x0, sigma, frame_mask)
    if space == "velocity":
        return flow_matching_loss(model_out, x0, noise, frame_mask)
    raise ValueError(f"loss space must be x0 or velocity, got {space!r}")


# -- sigma schedules -----------------------------------------------------------------------------


def sampling_sigmas(
    steps: int, shift: float = 3.0, device: torch.device | str | None = None
) -> torch.Tensor:
    """steps + 1 decreasing sigmas from 1 to 0, shifted."""
    return shift_sigmas(torch.linspace(1.0, 0.0, steps + 1, device=device), shift)


def acestep_sigmas(steps: int, shift: float = 3.0, train_timesteps: int = 1000) -> torch.Tensor:
    """steps + 1 sigmas as ACE-Step's FlowMatchEulerDiscreteScheduler(1000, shift=3) sets them:
    its training table is shift(linspace(1, T, T) / T), so its smallest sigma is shift(1 / T);
    inference takes `steps` points evenly from 1 down to that smallest sigma, shifts them *again*,
    and appends 0. One model call per sigma but the last."""
    sigma_min = shift_sigmas(torch.tensor(1.0 / train_timesteps, dtype=torch.float64), shift)
    points = torch.linspace(1.0, float(sigma_min), steps, dtype=torch.float64)
    sigmas = shift_sigmas(points, shift).float()
    return torch.cat([sigmas, torch.zeros(1)])


# -- guidance ------------------------------------------------------------------------------------


def cfg_guidance(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: uncond + scale * (cond - uncond)."""
    return uncond + scale * (cond - uncond)


class MomentumBuffer:
    """APG's running average of the guidance direction: avg <- diff + momentum * avg. ACE-Step
    uses momentum -0.75 (a negative momentum damps the direction's oscillation over steps)."""

    def __init__(self, momentum: float = -0.75):
        self.momentum = momentum
        self.running_average: torch.Tensor | float = 0.0

    def update(self, value: torch.Tensor) -> torch.Tensor:
        self.running_average = value + self.momentum * self.running_average
        return self.running_average


def apg_guidance(
    cond: torch.Tensor,
    uncond: torch.Tensor,
    scale: float,
    momentum: MomentumBuffer | None = None,
    norm_threshold: float = 2.5,
    eta: float = 0.0,
    dims: tuple[int, ...] = (-1, -2),
) -> torch.Tensor:
    """Adaptive projected guidance (Sadat et al. 2024) as ACE-Step applies it to (B, C, H, F)
    velocities: the guidance direction cond - uncond is momentum-averaged, its norm over `dims`
    (rows and frames, per channel) clipped to `norm_threshold`, and only its part orthogonal to
    `cond` (plus eta times the parallel part) is added, `scale - 1` times."""
    diff = cond - uncond
    if momentum is not None:
        diff = momentum.update(diff)
    if norm_threshold > 0:
        norm = diff.norm(p=2, dim=dims, keepdim=True)
        diff = diff * torch.minimum(torch.ones_like(norm), norm_threshold / norm)
    # the projection in float64, as the reference does: the orthogonal part is a small difference
    d, c = diff.double(), torch.nn.functional.normalize(cond.double(), dim=dims)
    parallel = (d * c).sum(dim=dims, keepdim=True) * c
    update = (d - parallel) + eta * parallel
    return cond + (scale - 1.0) * update.to(cond.dtype)


def guidance_interval_steps(steps: int, interval: float) -> tuple[int, int]:
    """[start, end) step indices that get guidance: the middle `interval` fraction of the steps
    (ACE-Step: interval 0.5 of 60 steps guides steps 15 ... 44, the rest run conditional only)."""
    return int(steps * ((1.0 - interval) / 2.0)), int(steps * (interval / 2.0 + 0.5))


def omega_rescale(dx: torch.Tensor, omega: float) -> torch.Tensor:
    """ACE-Step's Euler step rescale: the update's deviation from its mean is multiplied by
    0.9 + 0.2 * sigmoid(0.1 * omega) (omega 10 -> 1.046; omega 0 -> 1.0, a plain Euler step).
    As the reference, the mean is over the whole update tensor."""
    if omega == 0.0:
        return dx
    factor = 0.9 + 0.2 / (1.0 + math.exp(-0.1 * omega))
    mean = dx.mean()
    return (dx - mean) * factor + mean


# -- samplers ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplerSettings:
    """How to integrate from noise to x0. Defaults are today's plain CFG Euler sampler;
    `SamplerSettings.acestep()` is ACE-Step v1's text2music default."""

    method: str = "euler"  # euler | heun
    steps: int = 27
    guidance: str = "cfg"  # cfg | apg
    guidance_scale: float = 7.0
    # fraction of the steps, centred, that get guidance (1.0: all of them)
    guidance_interval: float = 1.0
    # > 0: the scale falls linearly to min_guidance_scale over the interval
    guidance_interval_decay: float = 0.0
    min_guidance_scale: float = 3.0
    schedule: str = "linear"  # linear: shift(linspace(1, 0)); acestep: acestep_sigmas
    shift: float = 3.0
    omega: float = 0.0  # Euler step rescale (acestep: 10)
    momentum: float = -0.75  # APG
    norm_threshold: float = 2.5  # APG
    eta: float = 0.0  # APG
    # the unconditional lyric mask: "keep" (ACE-Step's pipeline: ids zeroed, mask kept) or
    # "zero" (as a DiT trained with cfg_drop_lyric_mask saw dropped lyrics)
    uncond_lyric_mask: str = "keep"

    @classmethod
    def acestep(cls, **overrides: object) -> SamplerSettings:
        """Euler, 60 steps, APG at scale 15 in the middle half of the steps, omega 10."""
        values = dict(
            method="euler",
            steps=60,
            guidance="apg",
            guidance_scale=15.0,
            guidance_interval=0.5,
            schedule="acestep",
            omega=10.0,
        )
        return cls(**{**values, **overrides})

    def replace(self, **overrides: object) -> SamplerSettings:
        return dataclasses.replace(self, **overrides)

    def validate(self) -> None:
        if self.method not in ("euler", "heun"):
            raise ValueError(f"sampler method must be euler or heun, got {self.method!r}")
        if self.guidance not in ("cfg", "apg"):
            raise ValueError(f"guidance must be cfg or apg, got {self.guidance!r}")
        if self.schedule not in ("linear", "acestep"):
            raise ValueError(f"schedule must be linear or acestep, got {self.schedule!r}")
        if self.uncond_lyric_mask not in ("keep", "zero"):
            raise ValueError(
                f"uncond_lyric_mask must be keep or zero, got {self.uncond_lyric_mask!r}"
            )
        if self.steps < 1:
            raise ValueError("sampler steps must be >= 1")
        if not 0.0 <= self.guidance_interval <= 1.0:
            raise ValueError(f"guidance_interval must be in [0, 1], got {self.guidance_interval}")

    def sigmas(self) -> list[float]:
        if self.schedule == "acestep":
            return acestep_sigmas(self.steps, self.shift).tolist()
        return sampling_sigmas(self.steps, self.shift).tolist()


SAMPLERS = {
    "acestep": SamplerSettings.acestep(),
    "euler": SamplerSettings(method="euler"),
    "heun": SamplerSettings(method="heun"),
}


def _sample_of(out: object) -> torch.Tensor:
    return out.sample if hasattr(out, "sample") else out  # type: ignore[return-value]


class _Guided:
    """The (guided) velocity at one step: conditional only outside the guidance interval, the
    conditional and unconditional halves in one batch inside it."""

    def __init__(
        self,
        model: Denoiser,
        cond: Conditions,
        uncond: Conditions | None,
        frame_mask: torch.Tensor | None,
        settings: SamplerSettings,
    ):
        self.model, self.cond, self.frame_mask, self.settings = model, cond, frame_mask, settings
        self.guided = settings.guidance_scale != 1.0 and settings.guidance_scale != 0.0
        if self.guided and uncond is None:
            uncond = null_conditions(cond)
            if settings.uncond_lyric_mask == "zero":
                uncond = dataclasses.replace(
                    uncond, lyrics_mask=torch.zeros_like(uncond.lyrics_mask)
                )
        self.uncond = uncond if self.guided else None
        self.both = concat_conditions([cond, self.uncond]) if self.guided else None
        self.momentum = MomentumBuffer(settings.momentum) if settings.guidance == "apg" else None
        self.start, self.end = guidance_interval_steps(settings.steps, settings.guidance_interval)

    def scale_at(self, index: int) -> float:
        s = self.settings
        if s.guidance_interval_decay <= 0:
            return s.guidance_scale
        progress = (index - self.start) / max(1, self.end - self.start - 1)
        return (
            s.guidance_scale
            - (s.guidance_scale - s.min_guidance_scale) * progress * s.guidance_interval_decay
        )

    def __call__(self, x: torch.Tensor, sigma: float, index: int) -> torch.Tensor:
        batch = x.shape[0]
        if not (self.guided and self.start <= index < self.end):
            t = torch.full((batch,), sigma, device=x.device)
            return _sample_of(self.model(x, t, self.cond, self.frame_mask, return_repa=False))
        mask = None if self.frame_mask is None else torch.cat([self.frame_mask, self.frame_mask])
        t = torch.full((2 * batch,), sigma, device=x.device)
        out = _sample_of(self.model(torch.cat([x, x]), t, self.both, mask, return_repa=False))
        v_cond, v_uncond = out.chunk(2)
        scale = self.scale_at(index)
        if self.settings.guidance == "apg":
            s = self.settings
            return apg_guidance(v_cond, v_uncond, scale, self.momentum, s.norm_threshold, s.eta)
        return cfg_guidance(v_cond, v_uncond, scale)


@torch.no_grad()
def sample(
    model: Denoiser,
    noise: torch.Tensor,
    cond: Conditions,
    settings: SamplerSettings,
    uncond: Conditions | None = None,
    frame_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Integrate dx/dsigma = v from sigma 1 to 0 and return x0. Heun adds a trapezoidal corrector
    to each Euler step except the last one, to sigma 0 (its corrector uses the guidance of the
    step it corrects)."""
    settings.validate()
    velocity = _Guided(model, cond, uncond, frame_mask, settings)
    sigmas = settings.sigmas()
    x = noise
    for index, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:], strict=True)):
        before = velocity.momentum.running_average if velocity.momentum is not None else None
        v = velocity(x, sigma, index)
        if settings.method == "heun" and sigma_next > 0.0:
            x_euler = x + (sigma_next - sigma) * v
            # the corrector sees APG's momentum as the predictor did, and does not advance it
            after = velocity.momentum.running_average if velocity.momentum is not None else None
            if velocity.momentum is not None:
                velocity.momentum.running_average = before
            v_next = velocity(x_euler, sigma_next, index)
            if velocity.momentum is not None:
                velocity.momentum.running_average = after
            v = 0.5 * (v + v_next)
        x = x + omega_rescale((sigma_next - sigma) * v, settings.omega)
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
    """`steps` Euler steps from sigma 1 to 0 with plain CFG; returns x0."""
    settings = SamplerSettings(
        method="euler", steps=steps, guidance_scale=guidance_scale, shift=shift
    )
    return sample(model, noise, cond, settings, uncond, frame_mask)


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
    """Heun's second-order method (trapezoidal corrector) with plain CFG; the last step to
    sigma 0 is Euler."""
    settings = SamplerSettings(
        method="heun", steps=steps, guidance_scale=guidance_scale, shift=shift
    )
    return sample(model, noise, cond, settings, uncond, frame_mask)


def acestep_sample(
    model: Denoiser,
    noise: torch.Tensor,
    cond: Conditions,
    uncond: Conditions | None = None,
    frame_mask: torch.Tensor | None = None,
    **overrides: object,
) -> torch.Tensor:
    """ACE-Step v1's sampler: Euler, 60 steps, APG (momentum -0.75, norm threshold 2.5) at scale
    15 inside a guidance interval of 0.5, omega 10; `overrides` change any SamplerSettings field."""
    return sample(model, noise, cond, SamplerSettings.acestep(**overrides), uncond, frame_mask)
