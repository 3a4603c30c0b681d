"""DiT training-step throughput and model-FLOPs utilisation (MFU).

Counts the forward FLOPs with torch.utils.flop_counter on the meta device (matmuls, convolutions,
SDPA: what the model must compute) and takes 3x that for forward + backward (no recompute), then
times real bf16-autocast forward + backward steps and divides. The baseline in the same run is the dense-matmul ceiling: a
bf16 GEMM of the DiT's widest shape, timed here, whose achieved FLOP/s is the denominator of
"MFU vs measured GEMM" next to MFU vs the datasheet peak.

  .venv/bin/python benchmarks/bench_dit_mfu.py --device cuda --preset base --frames 2584
  .venv/bin/python benchmarks/bench_dit_mfu.py --preset tiny --frames 256        # CPU smoke run
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from songmill.model.conditions import Conditions  # noqa: E402
from songmill.model.config import preset  # noqa: E402
from songmill.model.dit import LinearDiT  # noqa: E402
from songmill.model.flow import add_noise, x0_space_loss  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

# dense bf16 tensor-core peak (no sparsity), FLOP/s
DATASHEET_PEAK = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}


def _batch(cfg, args: argparse.Namespace, device: str) -> tuple:
    batch, frames = args.batch, args.frames
    x = torch.randn(batch, cfg.in_channels, cfg.latent_height, frames, device=device)
    noise = torch.randn_like(x)
    sigma = torch.rand(batch, device=device)
    cond = Conditions(
        text=torch.randn(batch, args.text_tokens, cfg.text_dim, device=device),
        text_mask=torch.ones(batch, args.text_tokens, dtype=torch.bool, device=device),
        lyrics=torch.randint(0, cfg.lyrics.vocab_size, (batch, args.lyric_tokens), device=device),
        lyrics_mask=torch.ones(batch, args.lyric_tokens, dtype=torch.bool, device=device),
        speaker=torch.randn(batch, cfg.speaker_dim, device=device),
    )
    return x, noise, sigma, cond


def _step(model: LinearDiT, x, noise, sigma, cond, device: str) -> torch.Tensor:
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        noisy = add_noise(x, noise, sigma)
        out = model(noisy, sigma, cond)
        loss = x0_space_loss(out.sample, noisy, x, sigma)  # the training default (ACE-Step's)
        loss = loss + sum(r.float().square().mean() for r in out.repa.values()) * 0.0
    loss.backward()
    return loss


def count_flops(cfg, args: argparse.Namespace) -> int:
    with torch.device("meta"):
        model = LinearDiT(cfg)
    x, noise, sigma, cond = _batch(cfg, args, "meta")
    counter = FlopCounterMode(display=False)
    with counter:
        model(x, sigma, cond)
    # backward = 2 x forward (the usual MFU convention); FlopCounterMode's own backward count
    # treats the grouped (depthwise) conv backward as dense and overstates it ~10x
    return 3 * counter.get_total_flops()


def gemm_ceiling(width: int, tokens: int, device: str, repeats: int) -> float:
    a = torch.randn(tokens, width, device=device, dtype=torch.bfloat16)
    b = torch.randn(width, int(width * 2.5) * 2, device=device, dtype=torch.bfloat16)
    a @ b
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return 2 * a.shape[0] * a.shape[1] * b.shape[1] / min(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--frames", type=int, default=2584, help="latent frames (2584 = 240 s)")
    parser.add_argument("--text-tokens", type=int, default=256)
    parser.add_argument("--lyric-tokens", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--checkpointing", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument(
        "--peak-tflops", type=float, default=0.0, help="override the datasheet peak"
    )
    args = parser.parse_args()

    cfg = preset(args.preset).dit
    cfg.gradient_checkpointing = args.checkpointing
    flops = count_flops(cfg, args)
    torch.manual_seed(0)
    model = LinearDiT(cfg).to(args.device).train()
    step_model = torch.compile(model) if args.compile else model
    x, noise, sigma, cond = _batch(cfg, args, args.device)
    for _ in range(args.warmup):
        _step(step_model, x, noise, sigma, cond, args.device)
        model.zero_grad(set_to_none=True)
    if args.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        _step(step_model, x, noise, sigma, cond, args.device)
        if args.device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
    seconds = sorted(times)[len(times) // 2]
    achieved = flops / seconds
    gemm = gemm_ceiling(cfg.width, args.batch * args.frames, args.device, 20)

    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    peak = args.peak_tflops * 1e12 or next((v for k, v in DATASHEET_PEAK.items() if k in name), 0.0)
    params = sum(p.numel() for p in model.parameters())
    print(
        f"# DiT {args.preset} ({params / 1e9:.3f} B params), batch {args.batch} x {args.frames} "
        f"frames, text {args.text_tokens}, lyrics {args.lyric_tokens} tokens, bf16 autocast, "
        f"device {name}, checkpointing {args.checkpointing}, compile {args.compile}"
    )
    print(f"model FLOPs per fwd+bwd step : {flops / 1e9:.1f} GFLOP")
    print(f"step time (median of {args.steps}): {seconds * 1e3:.1f} ms")
    print(f"achieved                     : {achieved / 1e12:.3f} TFLOP/s")
    print(
        f"bf16 GEMM baseline (measured): {gemm / 1e12:.3f} TFLOP/s -> step at "
        f"{achieved / gemm:.1%} of it"
    )
    if peak:
        print(f"MFU vs datasheet {peak / 1e12:.0f} TFLOP/s : {achieved / peak:.1%}")
    if args.device == "cuda":
        print(f"peak memory                  : {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
