"""LoRA on the DiT through peft: inject adapters, save / load them alone, merge for export.

A LoRA run trains only the adapter matrices (a few MB instead of the full DiT), and its
checkpoints hold only those, next to a reference to the base DiT weights.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import torch
from torch import nn

ADAPTER_NAME = "dit_lora"
ADAPTER_CONFIG = "dit_lora.json"


def lora_config(rank: int, alpha: float, targets: Sequence[str], dropout: float = 0.0):
    from peft import LoraConfig

    return LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets), bias="none"
    )


def add_lora(
    model: nn.Module, rank: int, alpha: float, targets: Sequence[str], dropout: float = 0.0
) -> nn.Module:
    """Inject LoRA layers in place (base weights frozen, adapters trainable); returns `model`."""
    from peft import inject_adapter_in_model

    if rank <= 0:
        raise ValueError("LoRA rank must be > 0")
    model.requires_grad_(False)
    model = inject_adapter_in_model(lora_config(rank, alpha, targets, dropout), model)
    n_adapted = sum(1 for n, _ in model.named_modules() if n.endswith("lora_A"))
    if n_adapted == 0:
        raise ValueError(f"no module of the DiT matches the LoRA targets {list(targets)}")
    return model


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict

    return {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()}


def save_adapter(
    model: nn.Module,
    directory: str,
    rank: int,
    alpha: float,
    targets: Sequence[str],
    dropout: float = 0.0,
) -> str:
    """`dit_lora.safetensors` + `dit_lora.json` (the peft LoraConfig) in `directory`."""
    from safetensors.torch import save_file

    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"{ADAPTER_NAME}.safetensors")
    save_file(adapter_state_dict(model), path)
    with open(os.path.join(directory, ADAPTER_CONFIG), "w") as f:
        json.dump(
            {"rank": rank, "alpha": alpha, "targets": list(targets), "dropout": dropout},
            f,
            indent=2,
        )
    return path


def load_adapter(model: nn.Module, directory: str, inject: bool = True) -> nn.Module:
    """Adapters from `directory` into `model` (injecting the LoRA layers first when asked)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    with open(os.path.join(directory, ADAPTER_CONFIG)) as f:
        spec = json.load(f)
    if inject:
        model = add_lora(
            model, spec["rank"], spec["alpha"], spec["targets"], spec.get("dropout", 0.0)
        )
    tensors = load_file(os.path.join(directory, f"{ADAPTER_NAME}.safetensors"))
    result = set_peft_model_state_dict(model, tensors)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise ValueError(f"adapter file has keys the model lacks: {unexpected[:5]}")
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA update into its base layer and remove the adapters (for export)."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.get_base_layer())
    return model
