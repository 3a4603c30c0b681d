"""Multi-process training under `torchrun`: process group, device, DDP / FSDP wrapping.

`torchrun --nproc-per-node N -m songmill.flows.cli train dit ...` (or `--nnodes` for several machines)
sets RANK / WORLD_SIZE / LOCAL_RANK; without them training runs as one process. NCCL on GPUs,
gloo on CPU. Every rank builds the same initial weights from the same seed; DDP broadcasts them
from rank 0 anyway and averages gradients, so weights stay equal; ranks read disjoint slices of
every global batch (train/data.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(requested: str = "auto", local_rank: int = 0) -> torch.device:
    if requested == "auto":
        return (
            torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
        )
    device = torch.device(requested)
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    return device


def setup(device: str = "auto") -> DistInfo:
    """Join the torchrun process group when launched by torchrun; a single process otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if world_size > 1 and not torch_dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        torch_dist.init_process_group(backend=backend)
    return DistInfo(rank, world_size, local_rank, dev)


def teardown() -> None:
    if torch_dist.is_initialized():
        torch_dist.barrier()
        torch_dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        torch_dist.barrier()


def all_reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if not info.distributed:
        return value
    value = value.detach().clone()
    torch_dist.all_reduce(value, op=torch_dist.ReduceOp.SUM)
    return value / info.world_size


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True on every rank when it is True on any (a stop signal reaching one rank stops all)."""
    if not info.distributed:
        return flag
    t = torch.tensor(
        [1.0 if flag else 0.0], device=info.device if info.device.type == "cuda" else "cpu"
    )
    torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def choose_strategy(strategy: str, preset: str, lora: bool = False) -> str:
    """ddp or fsdp: "auto" means FSDP for the base preset, DDP otherwise. LoRA always trains
    under DDP: its adapters are a few MB, and FSDP would shard them (validation on rank 0 only
    and adapter files of DTensor shards), so an explicit fsdp + LoRA is refused."""
    if lora:
        if strategy == "fsdp":
            raise ValueError(
                "LoRA training does not run under FSDP (it would shard the adapters); "
                "use strategy=ddp or auto (DDP for LoRA)"
            )
        return "ddp"
    if strategy == "auto":
        return "fsdp" if preset == "base" else "ddp"
    return strategy


def wrap(module: nn.Module, info: DistInfo, strategy: str, preset: str = "") -> nn.Module:
    """DDP, or FSDP (fully_shard per block, then the root) for strategy fsdp (or auto on the base
    preset). Under DDP every parameter must get a gradient each step: the tasks make sure of it
    (unused REPA projectors get a zero-weighted loss term), so DDP skips the per-step graph
    traversal `find_unused_parameters` costs."""
    if not info.distributed:
        return module
    strategy = choose_strategy(strategy, preset) if strategy == "auto" else strategy
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for block in getattr(module, "transformer_blocks", None) or getattr(module, "blocks", []):
            fully_shard(block)
        fully_shard(module)
        return module
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids)


def is_fsdp(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module under DDP / torch.compile wrappers (FSDP modules are their own)."""
    while True:
        if hasattr(module, "module") and isinstance(module.module, nn.Module):
            module = module.module
        elif hasattr(module, "_orig_mod"):
            module = module._orig_mod
        else:
            return module


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded state dict on CPU (gathers FSDP shards; a collective on every rank)."""
    if is_fsdp(module):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(
            module, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
    return {k: v.detach().cpu() for k, v in unwrap(module).state_dict().items()}
