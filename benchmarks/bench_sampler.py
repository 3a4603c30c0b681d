"""Samplers: ACE-Step v1's (Euler 60, APG 15 in a 0.5 guidance interval, omega 10) against
songmill's earlier default (Euler 27, plain CFG 7) and Heun 27, in the same run.

    .venv/bin/python benchmarks/bench_sampler.py                    # CPU, a few minutes
    .venv/bin/python benchmarks/bench_sampler.py --preset small --seconds 10 --device cuda

1. Accuracy on a velocity field known exactly: data x0 ~ N(m, s^2) per element (m = 1 given the
   condition, m = 0 unconditionally), whose flow-matching velocity E[noise - x0 | x_t] has a
   closed form. Unguided: how far the samples' mean / std land from the data's (the error the
   integrator and its schedule make; omega 10 rescales every Euler step by 1.046). Guided at
   the release's scale 15: plain CFG extrapolates the mean 15x (oversaturation), APG's norm clip
   and orthogonal projection keep it near the data.
2. Cost with the real DiT (random weights, the preset's size): DiT forwards per sample and wall
   time per generated second, as ratios to the Euler 27 CFG baseline timed in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from songmill.model.conditions import Conditions, null_conditions  # noqa: E402
from songmill.model.flow import SamplerSettings, sample  # noqa: E402


class GaussianVelocity:
    """Exact velocity for x0 ~ N(m, s^2) elementwise on the path x_t = sigma n + (1 - sigma) x0:
    rows whose speaker vector is zero (the unconditional half) use m_uncond."""

    def __init__(self, m_cond: float, m_uncond: float, s: float):
        self.m_cond, self.m_uncond, self.s = m_cond, m_uncond, s
        self.forwards = 0

    def __call__(self, x, t, cond, frame_mask=None, return_repa=False):
        self.forwards += x.shape[0]
        sigma = t.double().reshape(-1, 1, 1, 1)
        uncond = (cond.speaker.abs().sum(dim=1) == 0).reshape(-1, 1, 1, 1)
        m = torch.where(
            uncond,
            torch.tensor(self.m_uncond, dtype=torch.float64),
            torch.tensor(self.m_cond, dtype=torch.float64),
        )
        var = sigma**2 + (1 - sigma) ** 2 * self.s**2
        centred = x.double() - (1 - sigma) * m
        noise_hat = sigma / var * centred
        x0_hat = m + (1 - sigma) * self.s**2 / var * centred
        return (noise_hat - x0_hat).to(x.dtype)


def _cond(batch: int) -> Conditions:
    return Conditions(
        torch.ones(batch, 2, 4),
        torch.ones(batch, 2, dtype=torch.bool),
        torch.ones(batch, 3, dtype=torch.long),
        torch.ones(batch, 3, dtype=torch.bool),
        torch.ones(batch, 512),
    )


SAMPLERS = {
    "euler27-cfg (baseline)": SamplerSettings(method="euler", steps=27, guidance="cfg"),
    "heun27-cfg": SamplerSettings(method="heun", steps=27, guidance="cfg"),
    "acestep euler60-apg, omega 0": SamplerSettings.acestep(omega=0.0),
    "acestep euler60-apg (release)": SamplerSettings.acestep(),
}


def accuracy(samples: int, seed: int) -> dict:
    m_cond, s = 1.0, 0.5
    out = {}
    for name, settings in SAMPLERS.items():
        gen = torch.Generator().manual_seed(seed)
        noise = torch.randn(samples, 8, 16, 16, generator=gen, dtype=torch.float64)
        row = {}
        for label, scale in (("unguided", 1.0), ("guided_15", 15.0)):
            field = GaussianVelocity(m_cond, 0.0, s)
            x = sample(field, noise, _cond(samples), settings.replace(guidance_scale=scale))
            row[label] = {
                "mean": float(x.mean()),
                "std": float(x.std()),
                "forwards_per_sample": field.forwards / samples,
            }
        out[name] = row
    print(
        f"\n1. exact Gaussian velocity field, {samples} samples: data mean {m_cond} (given the condition), std {s}"
    )
    print(
        f"{'sampler':32s}{'unguided mean':>15s}{'std':>8s}{'|std err|':>10s}{'guided 15 mean':>16s}{'std':>8s}"
    )
    for name, row in out.items():
        u, g = row["unguided"], row["guided_15"]
        print(
            f"{name:32s}{u['mean']:15.4f}{u['std']:8.4f}{abs(u['std'] - s) / s:10.2%}{g['mean']:16.3f}{g['std']:8.3f}"
        )
    return out


def cost(preset_name: str, seconds: float, device: str, repeats: int) -> dict:
    from songmill.model.config import preset
    from songmill.model.dit import LinearDiT

    cfg = preset(preset_name).dit
    torch.manual_seed(0)
    dit = LinearDiT(cfg).to(device).eval()
    frames = int(round(seconds * 44100 / 512 / 8))
    text = torch.randn(1, 32, cfg.text_dim)
    cond = Conditions(
        text,
        torch.ones(1, 32, dtype=torch.bool),
        torch.randint(1, 200, (1, 64)),
        torch.ones(1, 64, dtype=torch.bool),
        torch.randn(1, cfg.speaker_dim),
    ).to(device)
    noise = torch.randn(
        1, cfg.in_channels, cfg.latent_height, frames, generator=torch.Generator().manual_seed(0)
    ).to(device)
    forwards = {"n": 0}
    hook = dit.register_forward_pre_hook(
        lambda m, a: forwards.__setitem__("n", forwards["n"] + a[0].shape[0])
    )
    sample(dit, noise, cond, SamplerSettings(steps=2))  # warm-up
    out = {}
    for name, settings in SAMPLERS.items():
        times = []
        for _ in range(repeats):
            forwards["n"] = 0
            if device == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            sample(dit, noise, cond, settings, uncond=null_conditions(cond))
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
        out[name] = {"seconds": min(times), "forwards": forwards["n"]}
    hook.remove()
    base = out["euler27-cfg (baseline)"]
    print(
        f"\n2. DiT {preset_name} (random weights) on {device}, {seconds:g} s of audio ({frames} latent frames), best of {repeats}"
    )
    print(f"{'sampler':32s}{'DiT forwards':>14s}{'s':>9s}{'x baseline':>12s}{'s per audio s':>15s}")
    for name, r in out.items():
        print(
            f"{name:32s}{r['forwards']:14d}{r['seconds']:9.2f}{r['seconds'] / base['seconds']:12.2f}{r['seconds'] / seconds:15.3f}"
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="tiny", choices=("tiny", "small", "base"))
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads (1: steadiest on a shared machine)"
    )
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    results = {
        "accuracy": accuracy(args.samples, args.seed),
        "cost": cost(args.preset, args.seconds, args.device, args.repeats),
    }
    print(json.dumps(results))


if __name__ == "__main__":
    main()
