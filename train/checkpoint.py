"""Checkpoints with nothing loaded through pickle.

A checkpoint is a directory `<run>/checkpoints/step-00001234/`:
- `<name>.safetensors` + `<name>.json` for each network (model/weights.save_module), and
  `<name>_ema.safetensors` for its EMA weights;
- `state.safetensors` + `state.json`: optimizers, schedulers and RNG states, flattened into
  tensors (safetensors) plus a JSON skeleton that says where each tensor goes;
- `trainer.json`: step, data position, training config and its hash.
It is written under a temporary name and renamed into place, then `checkpoints/latest` names it,
so a kill at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from songmill.model.weights import (  # noqa: F401  (re-exported: the checkpoint API lives here)
    LATEST,
    PICKLE_SUFFIXES,
    TRAINER_FILE,
    CheckpointError,
    refuse_pickle,
    resolve_checkpoint,
)

# -- flattening arbitrary state (optimizer / scheduler / RNG) into tensors + JSON ------------


def flatten_state(state: Any, tensors: dict[str, torch.Tensor], prefix: str = "") -> Any:
    """JSON-able skeleton of `state`; every tensor moves into `tensors` under a dotted key."""
    if isinstance(state, torch.Tensor):
        tensors[prefix] = state.detach().cpu().contiguous()
        return {"__tensor__": prefix}
    if isinstance(state, np.ndarray):
        # Unsigned arrays (numpy's MT19937 state) travel as int64: not every torch has uint32.
        tensors[prefix] = torch.from_numpy(np.ascontiguousarray(state).astype(np.int64))
        return {"__ndarray__": prefix, "dtype": str(state.dtype)}
    if isinstance(state, Mapping):
        # JSON keys are strings: remember which were ints (optimizer state is keyed by int).
        items = {
            str(k): flatten_state(v, tensors, f"{prefix}.{k}" if prefix else str(k))
            for k, v in state.items()
        }
        int_keys = [str(k) for k in state if isinstance(k, int)]
        return {"__dict__": items, "__int_keys__": int_keys} if int_keys else {"__dict__": items}
    if isinstance(state, tuple):
        return {
            "__tuple__": [flatten_state(v, tensors, f"{prefix}.{i}") for i, v in enumerate(state)]
        }
    if isinstance(state, list):
        return [flatten_state(v, tensors, f"{prefix}.{i}") for i, v in enumerate(state)]
    if state is None or isinstance(state, bool | int | float | str):
        return state
    raise CheckpointError(f"cannot store {type(state).__name__} at {prefix!r} without pickle")


def unflatten_state(skeleton: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            return tensors[skeleton["__tensor__"]]
        if "__ndarray__" in skeleton:
            return tensors[skeleton["__ndarray__"]].numpy().astype(skeleton["dtype"])
        if "__tuple__" in skeleton:
            return tuple(unflatten_state(v, tensors) for v in skeleton["__tuple__"])
        int_keys = set(skeleton.get("__int_keys__", ()))
        return {
            (int(k) if k in int_keys else k): unflatten_state(v, tensors)
            for k, v in skeleton["__dict__"].items()
        }
    if isinstance(skeleton, list):
        return [unflatten_state(v, tensors) for v in skeleton]
    return skeleton


# -- RNG ---------------------------------------------------------------------------------------


def rng_state(generators: Mapping[str, torch.Generator] = {}) -> dict[str, Any]:
    """Every RNG a training step may draw from: python, numpy, torch (CPU, CUDA), our own."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "generators": {name: g.get_state() for name, g in generators.items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any], generators: Mapping[str, torch.Generator] = {}) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(tuple(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, g in generators.items():
        if name in state["generators"]:
            g.set_state(state["generators"][name])


# -- save / load -------------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """What a checkpoint directory holds, once loaded (weights stay on disk until asked for)."""

    path: str
    step: int
    trainer: dict[str, Any]
    state: dict[str, Any] = field(default_factory=dict)

    def weights(self, name: str) -> dict[str, torch.Tensor]:
        return load_file(os.path.join(self.path, f"{name}.safetensors"))

    def has(self, name: str) -> bool:
        return os.path.exists(os.path.join(self.path, f"{name}.safetensors"))


def save_checkpoint(
    run_dir: str,
    step: int,
    networks: Mapping[str, tuple[torch.nn.Module | Mapping[str, torch.Tensor], dict[str, Any]]],
    state: Mapping[str, Any],
    trainer: Mapping[str, Any],
    keep: int = 2,
) -> str:
    """Write `<run_dir>/checkpoints/step-<step>` atomically and point `latest` at it.

    `networks`: name -> (module or state dict, config dict). `state`: anything flatten_state takes.
    """
    root = os.path.join(run_dir, "checkpoints")
    os.makedirs(root, exist_ok=True)
    name = f"step-{step:08d}"
    final = os.path.join(root, name)
    tmp = os.path.join(root, f".tmp-{name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for net_name, (net, config) in networks.items():
        tensors = net.state_dict() if isinstance(net, torch.nn.Module) else dict(net)
        save_weights(os.path.join(tmp, f"{net_name}.safetensors"), tensors)
        with open(os.path.join(tmp, f"{net_name}.json"), "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = flatten_state(dict(state), tensors)
    save_file(tensors, os.path.join(tmp, "state.safetensors"))
    with open(os.path.join(tmp, "state.json"), "w") as f:
        json.dump(skeleton, f)
    with open(os.path.join(tmp, TRAINER_FILE), "w") as f:
        json.dump({**trainer, "step": step}, f, indent=2, sort_keys=True)
    if os.path.exists(final):
        shutil.rmtree(final)
    os.replace(tmp, final)
    _write_text_atomic(os.path.join(root, LATEST), name)
    _prune(root, keep, name)
    return final


def save_weights(path: str, tensors: Mapping[str, torch.Tensor]) -> None:
    """safetensors refuses tensors sharing memory (tied weights): store a copy of each."""
    seen: set[int] = set()
    out = {}
    for key, t in tensors.items():
        t = t.detach().cpu()
        ptr = t.untyped_storage().data_ptr()
        out[key] = t.clone().contiguous() if ptr in seen or not t.is_contiguous() else t
        seen.add(ptr)
    save_file(out, path)


def _write_text_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _prune(root: str, keep: int, current: str) -> None:
    steps = sorted(d for d in os.listdir(root) if d.startswith("step-"))
    for old in steps[: max(0, len(steps) - keep)]:
        if old != current:
            shutil.rmtree(os.path.join(root, old), ignore_errors=True)


def load_checkpoint(path: str, with_state: bool = True) -> Checkpoint:
    path = resolve_checkpoint(path)
    refuse_pickle(path)
    with open(os.path.join(path, TRAINER_FILE)) as f:
        trainer = json.load(f)
    state: dict[str, Any] = {}
    if with_state and os.path.exists(os.path.join(path, "state.json")):
        with open(os.path.join(path, "state.json")) as f:
            skeleton = json.load(f)
        state = unflatten_state(skeleton, load_file(os.path.join(path, "state.safetensors")))
    return Checkpoint(path, int(trainer["step"]), trainer, state)


def check_config_matches(
    saved: Mapping[str, Any], current: Mapping[str, Any], force: bool
) -> list[str]:
    """Names of hashed settings that differ; raises unless forced."""
    changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if changed and not force:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed)
        raise CheckpointError(
            f"refusing to resume with a changed training config ({details}); "
            "pass --force to resume anyway, or start a new run directory"
        )
    return changed
