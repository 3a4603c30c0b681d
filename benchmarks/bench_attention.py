"""Self-attention scaling: the DiT's ReLU linear attention vs PyTorch SDPA (softmax), same width.

For 512 ... 16384 frames, times (best of --repeats) the attention core on (1, heads, N, head_dim) q/k/v (forward, or
forward + backward with --backward) and measures peak memory: CUDA allocator peak on a GPU, the
peak-RSS growth of a fresh worker process on CPU. Linear attention runs in fp32 as in the model;
SDPA runs in the compute dtype (fp32 on CPU, bf16 on CUDA, where it picks flash attention).

  .venv/bin/python benchmarks/bench_attention.py                       # CPU, width 256
  .venv/bin/python benchmarks/bench_attention.py --device cuda --width 2560 --head-dim 128
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from songmill.model.layers import relu_linear_attention  # noqa: E402

FRAMES = (512, 1024, 2048, 2584, 4096, 8192, 16384)


def _inputs(args: argparse.Namespace, frames: int) -> list[torch.Tensor]:
    heads = args.width // args.head_dim
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    generator = torch.Generator(device="cpu").manual_seed(0)
    return [
        torch.randn(args.batch, heads, frames, args.head_dim, generator=generator)
        .to(args.device, dtype)
        .requires_grad_(args.backward)
        for _ in range(3)
    ]


def _run(impl: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backward: bool) -> None:
    if impl == "linear":
        out = relu_linear_attention(q, k, v)
    else:
        out = F.scaled_dot_product_attention(q, k, v)
    if backward:
        out.float().sum().backward()


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure(args: argparse.Namespace, impl: str, frames: int) -> dict[str, float]:
    """Best-of-repeats seconds per call and peak extra memory in MiB for one implementation and length."""
    # load the kernels on a short input first so their code and workspaces are not counted
    _run(impl, *_inputs(args, 64), args.backward)
    q, k, v = _inputs(args, frames)
    if args.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    _run(impl, q, k, v, args.backward)  # first call: warm-up and the memory peak
    _sync(args.device)
    if args.device == "cuda":
        peak_mib = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    times = []
    for _ in range(args.repeats):
        for tensor in (q, k, v):
            tensor.grad = None
        start = time.perf_counter()
        _run(impl, q, k, v, args.backward)
        _sync(args.device)
        times.append(time.perf_counter() - start)
    # best of the repeats: the least disturbed by other work on a shared machine
    return {"seconds": min(times), "peak_mib": peak_mib}


def _measure_in_worker(args: argparse.Namespace, impl: str, frames: int) -> dict[str, float]:
    """CPU: a fresh process per measurement so its peak RSS belongs to this one call only."""
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        impl,
        str(frames),
        "--device",
        args.device,
        "--width",
        str(args.width),
        "--head-dim",
        str(args.head_dim),
        "--batch",
        str(args.batch),
        "--repeats",
        str(args.repeats),
        "--threads",
        str(args.threads),
    ] + (["--backward"] if args.backward else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--frames", type=int, nargs="+", default=list(FRAMES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0 = default)")
    parser.add_argument("--backward", action="store_true", help="time forward + backward")
    parser.add_argument("--worker", nargs=2, metavar=("IMPL", "FRAMES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(measure(args, args.worker[0], int(args.worker[1]))))
        return

    heads = args.width // args.head_dim
    mode = "fwd+bwd" if args.backward else "fwd"
    name = (
        torch.cuda.get_device_name() if args.device == "cuda" else f"cpu x{torch.get_num_threads()}"
    )
    print(
        f"# self-attention {mode}, batch {args.batch}, width {args.width} = {heads} heads x "
        f"{args.head_dim}, device {name}, torch {torch.__version__}"
    )
    print(
        f"{'frames':>7} {'linear ms':>10} {'sdpa ms':>10} {'speedup':>8} "
        f"{'linear MiB':>11} {'sdpa MiB':>9} {'mem ratio':>9}"
    )
    for frames in args.frames:
        row = {}
        for impl in ("linear", "sdpa"):
            if args.device == "cuda":
                row[impl] = measure(args, impl, frames)
            else:
                row[impl] = _measure_in_worker(args, impl, frames)
        lin, sdpa = row["linear"], row["sdpa"]
        speedup = sdpa["seconds"] / lin["seconds"]
        mem_ratio = sdpa["peak_mib"] / max(lin["peak_mib"], 1e-3)
        print(
            f"{frames:>7} {lin['seconds'] * 1e3:>10.2f} {sdpa['seconds'] * 1e3:>10.2f} {speedup:>7.2f}x "
            f"{lin['peak_mib']:>11.1f} {sdpa['peak_mib']:>9.1f} {mem_ratio:>8.2f}x",
            flush=True,
        )
    print(
        "# speedup = sdpa time / linear time; mem ratio = sdpa peak / linear peak (extra over inputs)"
    )


if __name__ == "__main__":
    main()
