"""Weights on disk: `<name>.safetensors` + `<name>.json` (the config dict), strict key checks.

Pickle-based checkpoints (.bin / .pt / .pth / .ckpt / .pkl) are never loaded: torch.load on an
untrusted file can run code.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# A training run's checkpoints: `<run>/checkpoints/step-N/` holding TRAINER_FILE, and
# `<run>/checkpoints/latest` naming the newest (train/checkpoint.py writes them).
LATEST = "latest"
TRAINER_FILE = "trainer.json"


class CheckpointError(RuntimeError):
    """No usable checkpoint where one was named."""


class WeightsMismatch(RuntimeError):
    """The file's tensors do not match the module's state dict (names or shapes)."""


class WeightsMissing(FileNotFoundError):
    """Weights a model needs are not on this machine; the message names the file and how to get
    it. The annotate runner turns it into a stage's retryable "unavailable" errors."""


def weight_paths(directory: str | Path, name: str) -> tuple[Path, Path]:
    directory = Path(directory)
    return directory / f"{name}.safetensors", directory / f"{name}.json"


def save_module(
    module: nn.Module, config_dict: dict[str, Any], directory: str | Path, name: str
) -> Path:
    """Write the module's state dict as safetensors and its config as JSON; returns the tensor file."""
    from safetensors.torch import save_file

    tensors_path, config_path = weight_paths(directory, name)
    tensors_path.parent.mkdir(parents=True, exist_ok=True)
    state: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, value in module.state_dict().items():
        value = value.detach().contiguous().cpu()
        # safetensors refuses aliases (one tensor under several names, e.g. shared rotary
        # frequencies): every name after the first gets its own copy.
        if value.numel() and value.untyped_storage().data_ptr() in seen:
            value = value.clone()
        seen.add(value.untyped_storage().data_ptr())
        state[key] = value
    tmp = tensors_path.with_suffix(".safetensors.tmp")
    save_file(state, str(tmp), metadata={"format": "pt", "name": name})
    tmp.replace(tensors_path)
    config_tmp = config_path.with_suffix(".json.tmp")
    config_tmp.write_text(json.dumps(config_dict, indent=2, sort_keys=True) + "\n")
    config_tmp.replace(config_path)
    return tensors_path


def _refuse_pickle(directory: Path, name: str) -> None:
    for suffix in PICKLE_SUFFIXES:
        candidate = directory / f"{name}{suffix}"
        if candidate.exists():
            raise ValueError(
                f"refusing to load pickle checkpoint {candidate}: convert it to safetensors "
                "(safetensors.torch.save_file) in a trusted environment first"
            )


def load_state_into(module: nn.Module, tensors_path: str | Path, strict: bool = True) -> None:
    """Copy a safetensors file into `module`, checking names and shapes (all of them if strict)."""
    from safetensors.torch import load_file

    tensors_path = Path(tensors_path)
    if tensors_path.suffix in PICKLE_SUFFIXES:
        raise ValueError(f"refusing to load pickle checkpoint {tensors_path}")
    loaded = load_file(str(tensors_path))
    expected = module.state_dict()
    missing = sorted(set(expected) - set(loaded))
    unexpected = sorted(set(loaded) - set(expected))
    wrong_shape = sorted(
        f"{k}: file {tuple(loaded[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(loaded) & set(expected)
        if loaded[k].shape != expected[k].shape
    )
    if wrong_shape or (strict and (missing or unexpected)):
        raise WeightsMismatch(
            f"{tensors_path}: missing {missing[:10]} ({len(missing)}), unexpected "
            f"{unexpected[:10]} ({len(unexpected)}), wrong shapes {wrong_shape[:10]}"
        )
    module.load_state_dict({k: v for k, v in loaded.items() if k in expected}, strict=strict)


def load_config(directory: str | Path, name: str) -> dict[str, Any]:
    _, config_path = weight_paths(directory, name)
    return json.loads(config_path.read_text())


def load_module(
    cls_or_factory: type[nn.Module] | Callable[[dict[str, Any]], nn.Module],
    directory: str | Path,
    name: str,
    strict: bool = True,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """Rebuild a module from `<name>.json` and fill it from `<name>.safetensors`.

    `cls_or_factory` is a module class with a `config_class` attribute (built as
    `cls(cls.config_class.from_dict(cfg))`) or any callable taking the config dict.
    Raises WeightsMissing naming the missing file when the weights are absent.
    """
    directory = Path(directory)
    tensors_path, config_path = weight_paths(directory, name)
    _refuse_pickle(directory, name)
    for required in (tensors_path, config_path):
        if not required.exists():
            raise WeightsMissing(
                f"model weights missing: {required} not found; train them with `songmill train` "
                f"or copy a `{name}.safetensors` + `{name}.json` pair into {directory}"
            )
    config = json.loads(config_path.read_text())
    config_class = getattr(cls_or_factory, "config_class", None)
    if isinstance(cls_or_factory, type) and config_class is not None:
        module = cls_or_factory(config_class.from_dict(config))
    else:
        module = cls_or_factory(config)  # type: ignore[call-arg]
    load_state_into(module, tensors_path, strict=strict)
    return module.to(device)


def resolve_checkpoint(path: str) -> str:
    """A checkpoint dir from a run dir (its latest), a checkpoints dir, or the checkpoint itself."""
    path = os.path.abspath(path)
    for candidate in (path, os.path.join(path, "checkpoints")):
        if os.path.exists(os.path.join(candidate, TRAINER_FILE)):
            return candidate
        latest = os.path.join(candidate, LATEST)
        if os.path.exists(latest):
            with open(latest) as f:
                return os.path.join(candidate, f.read().strip())
    refuse_pickle(path)
    raise CheckpointError(
        f"no checkpoint at {path} (expected {TRAINER_FILE} or checkpoints/{LATEST})"
    )


def refuse_pickle(path: str) -> None:
    """Pickle files can run code when loaded: we never open them, and say so."""
    if os.path.isfile(path) and path.endswith(PICKLE_SUFFIXES):
        found = [os.path.basename(path)]
    elif os.path.isdir(path):
        found = sorted(f for f in os.listdir(path) if f.endswith(PICKLE_SUFFIXES))
    else:
        found = []
    if found:
        raise CheckpointError(
            f"{path}: refusing pickle checkpoint file(s) {found}: loading pickle can run arbitrary "
            "code. songmill reads safetensors + JSON only; convert the weights to safetensors "
            "(safetensors.torch.save_file) in an environment you trust."
        )
