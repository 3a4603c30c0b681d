"""The training loop, for the DCAE and the DiT alike (nanoGPT-style: one readable function).

    songmill train dit --manifest m.parquet --preset tiny --run-dir runs/dit --max-steps 1000

Per optimizer step: `grad_accum` micro-batches (forward under bf16 autocast on GPU, backward),
gradient clipping, AdamW step, LR schedule (linear warm-up, then cosine / linear decay), EMA
update, logs (TensorBoard scalars + progress bar), a validation sample every `val_every` steps,
a checkpoint every `ckpt_every` steps and on SIGTERM / SIGINT. `--resume` restores weights, EMA,
optimizer, scheduler, RNG states and the data position, so the run goes on exactly as if it had
never stopped.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from songmill.train import dist
from songmill.train.checkpoint import (
    CheckpointError,
    check_config_matches,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from songmill.train.config import TrainConfig, with_legacy_values
from songmill.train.data import BatchStream, BucketBatchOrder, DataPosition
from songmill.train.tasks import build_task
from torch import nn


@dataclass
class TrainResult:
    run_dir: str
    step: int
    losses: list[float] = field(default_factory=list)  # one per optimizer step of this invocation
    checkpoint: str | None = None
    stopped_by_signal: bool = False
    samples: list[dict[str, str]] = field(default_factory=list)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of cfg.lr at optimizer step `step` (0-based), as ACE-Step's trainer.py: linear
    warm-up from 0 (step / warmup_steps), then decay to min_lr_ratio over the remaining steps."""
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return step / cfg.warmup_steps
    if cfg.decay == "constant":
        return 1.0
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if cfg.decay == "cosine" else 1.0 - progress
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * shape


class EMA:
    """Exponential moving average of a module's parameters (fp32 copies). Buffers (the DCAE's
    latent shift / scale) are not averaged: the EMA state takes the live model's.

    Works on FSDP-sharded (DTensor) parameters too: each rank averages its own shard.
    """

    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in self._tracked(module).items()}

    @staticmethod
    def _tracked(module: nn.Module) -> dict[str, torch.Tensor]:
        return dict(module.named_parameters())

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        current = self._tracked(module)
        keys = list(self.shadow)
        torch._foreach_lerp_(
            [self.shadow[k] for k in keys], [current[k].float() for k in keys], 1.0 - self.decay
        )

    def full_state(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """Unsharded EMA weights on CPU, as a complete state dict of `module` (collective under FSDP)."""
        # Gather every shard first (all ranks take part); under FSDP only rank 0 gets the state.
        gathered = {
            k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().cpu()
            for k, v in self.shadow.items()
        }
        state = {k: v.detach() for k, v in dist.full_state_dict(module).items()}
        if not state:
            return {}
        for k, v in gathered.items():
            state[k] = v.to(state[k].dtype)
        return state

    def load_full_state(self, tensors: dict[str, torch.Tensor]) -> None:
        for k, v in self.shadow.items():
            value = tensors[k].float()
            if hasattr(v, "device_mesh"):  # re-shard like the parameter
                from torch.distributed.tensor import distribute_tensor

                value = distribute_tensor(value.to(v.device), v.device_mesh, v.placements)
            v.copy_(value.to(v.device) if not hasattr(value, "device_mesh") else value)


class StopSignal:
    """SIGTERM / SIGINT set a flag; the loop checkpoints at the end of the step and stops."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignal:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: the caller handles signals
                pass
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _autocast(cfg: TrainConfig, device: torch.device):
    use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")
    if not use_bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _log(message: str, info: dist.DistInfo) -> None:
    if info.is_main:
        print(message, flush=True)


def train(
    cfg: TrainConfig, manifest: str, run_dir: str, resume: str | None = None, force: bool = False
) -> TrainResult:
    info = dist.setup(cfg.device)
    device = info.device
    os.makedirs(run_dir, exist_ok=True)

    # Same seed on every rank: identical initial weights (DDP also broadcasts rank 0's).
    torch.manual_seed(cfg.seed)
    task = build_task(cfg, manifest)
    model = task.model
    lora = cfg.kind == "dit" and cfg.lora_rank > 0
    if lora:
        model = _prepare_lora(model, cfg)
    model.to(device)

    # -- resume: weights first (into the plain module), the rest after wrapping ---------------
    ckpt = None
    start_step, position = 0, DataPosition()
    if resume:
        ckpt = load_checkpoint(resume)
        saved_config = with_legacy_values(dict(ckpt.trainer["config"]), hashed_only=True)
        saved_max = int(saved_config.pop("max_steps", cfg.max_steps))
        current = {k: v for k, v in cfg.hashed_fields().items() if k != "max_steps"}
        check_config_matches(saved_config, current, force)
        if cfg.max_steps != saved_max:
            # The commonest resume: go on for longer. The LR schedule is a function of max_steps,
            # so it stretches to the new end from this step on.
            _log(
                f"extending the run: max_steps {saved_max} -> {cfg.max_steps}; the {cfg.decay} LR "
                f"schedule now ends at step {cfg.max_steps}",
                info,
            )
        if ckpt.step >= cfg.max_steps:
            raise CheckpointError(
                f"the checkpoint is at step {ckpt.step}, already at max_steps {cfg.max_steps}: "
                f"pass a larger --max-steps to continue"
            )
        if lora:
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(model, ckpt.weights("dit_lora"))
        else:
            model.load_state_dict(ckpt.weights(task.name))
        for name, net in _extra_networks(task).items():
            net.load_state_dict(ckpt.weights(name))
        start_step = ckpt.step
        position = DataPosition(**ckpt.trainer["data_position"])
        _log(f"resuming from {ckpt.path} at step {start_step}", info)

    strategy = dist.choose_strategy(cfg.strategy, cfg.preset, lora)
    if (
        lora
        and info.distributed
        and cfg.strategy == "auto"
        and dist.choose_strategy("auto", cfg.preset) == "fsdp"
    ):
        _log(
            "LoRA trains with DDP, not FSDP (the base preset's usual choice): FSDP would shard the adapters",
            info,
        )
    wrapped = dist.wrap(model, info, strategy)
    fsdp = dist.is_fsdp(model)
    if cfg.compile:
        wrapped = torch.compile(wrapped)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))
    ema = EMA(model, cfg.ema_decay) if cfg.ema_decay > 0 and not lora else None
    # The training step's own randomness (noise, timesteps, CFG dropout), one stream per rank.
    generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + info.rank + 1)

    if ckpt is not None:
        _load_optimizer(model, optimizer, ckpt.state["optimizer"], fsdp)
        scheduler.load_state_dict(ckpt.state["scheduler"])
        for name, opt in _extra_optimizers(task).items():
            opt.load_state_dict(ckpt.state[name])
        if ema is not None:
            ema.load_full_state(ckpt.weights(f"{task.name}_ema"))
        rngs = ckpt.state["rng"]
        if info.rank < len(rngs):
            set_rng_state(rngs[info.rank], {"train": generator})
        else:  # more ranks than the run was saved with: new ranks start fresh streams
            _log(f"checkpoint has RNG states for {len(rngs)} ranks; ranks beyond start fresh", info)

    order = BucketBatchOrder(
        task.dataset.lengths(), cfg.batch_size, cfg.bucket_s, cfg.seed, info.rank, info.world_size
    )
    stream = BatchStream(task.dataset, order, task.collate, cfg.num_workers, position)
    writer = _tensorboard(run_dir) if info.is_main else None
    sample_dir = os.path.join(run_dir, "samples")
    result = TrainResult(run_dir=run_dir, step=start_step)
    n_params = sum(p.numel() for p in params)
    _log(
        f"training {task.name} ({cfg.preset}, {n_params / 1e6:.2f} M trainable parameters) on {device} "
        f"x{info.world_size}, steps {start_step} -> {cfg.max_steps}",
        info,
    )

    progress = _progress_bar(cfg, info, start_step)
    with StopSignal() as stop:
        step = start_step
        while step < cfg.max_steps:
            started = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            step_loss, logs = 0.0, {}
            for micro in range(cfg.grad_accum):
                batch = next(stream)
                if cfg.trace:
                    _trace(
                        run_dir,
                        info,
                        {"step": step, "micro": micro, "track_ids": batch["track_ids"]},
                    )
                sync = micro == cfg.grad_accum - 1 or not isinstance(
                    wrapped, nn.parallel.DistributedDataParallel
                )
                with (
                    contextlib.nullcontext() if sync else wrapped.no_sync(),
                    _autocast(cfg, device),
                ):
                    loss, logs = task.loss(wrapped, batch, generator, device)
                (loss / cfg.grad_accum).backward()
                step_loss += float(loss.detach()) / cfg.grad_accum
            grad_norm = (
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip) if cfg.grad_clip > 0 else None
            )
            optimizer.step()
            scheduler.step()
            logs |= task.after_step(device)
            if ema is not None:
                ema.update(model)
            step += 1

            # -- bookkeeping --------------------------------------------------------------
            mean_loss = float(dist.all_reduce_mean(torch.tensor(step_loss), info))
            result.losses.append(mean_loss)
            result.step = step
            if writer is not None and (step % cfg.log_every == 0 or step == cfg.max_steps):
                writer.add_scalar("loss/total", mean_loss, step)
                writer.add_scalar("lr", scheduler.get_last_lr()[0], step)
                writer.add_scalar("time/step_s", time.perf_counter() - started, step)
                if grad_norm is not None:
                    writer.add_scalar("grad_norm", float(grad_norm), step)
                for key, value in logs.items():
                    writer.add_scalar(key, value, step)
            if progress is not None:
                progress.update(1)
                progress.set_postfix(
                    loss=f"{mean_loss:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}"
                )
            if cfg.val_every and step % cfg.val_every == 0:
                sample = _validate(task, model, ema, cfg, info, sample_dir, step, device)
                if sample:
                    result.samples.append(sample)
                    if writer is not None:
                        with open(sample["txt"]) as f:
                            writer.add_text("sample/prompt", f.read(), step)

            stop_now = dist.any_rank(stop.requested, info)
            if cfg.stop_at_step and step >= cfg.stop_at_step:
                stop_now = True
            if stop_now or step == cfg.max_steps or (cfg.ckpt_every and step % cfg.ckpt_every == 0):
                result.checkpoint = _save(
                    task,
                    model,
                    ema,
                    optimizer,
                    scheduler,
                    generator,
                    stream.position,
                    cfg,
                    info,
                    run_dir,
                    step,
                    lora,
                    fsdp,
                )
            if stop_now:
                result.stopped_by_signal = stop.requested
                _log(f"stopping at step {step}" + (" (signal)" if stop.requested else ""), info)
                break
    if progress is not None:
        progress.close()
    if cfg.trace:
        _trace(run_dir, info, {"final_step": result.step, "weights_sha256": weights_digest(model)})
    if writer is not None:
        writer.close()
    dist.barrier(info)
    return result


# -- pieces of the loop -----------------------------------------------------------------------


def weights_digest(model: nn.Module) -> str:
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(dist.full_state_dict(model).items()):
        digest.update(name.encode())
        digest.update(
            tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
        )
    return digest.hexdigest()


def _trace(run_dir: str, info: dist.DistInfo, record: dict[str, Any]) -> None:
    import json

    with open(os.path.join(run_dir, f"trace-rank{info.rank}.jsonl"), "a") as f:
        f.write(json.dumps(record) + "\n")


def _prepare_lora(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    """Adapters on the task's DiT (built from cfg.base_checkpoint, its weights frozen)."""
    from songmill.train.lora import add_lora

    if not cfg.base_checkpoint:
        raise ValueError("LoRA training needs base_checkpoint: the DiT checkpoint to adapt")
    return add_lora(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets, cfg.lora_dropout)


def _extra_networks(task) -> dict[str, nn.Module]:
    return getattr(task, "extra_networks", dict)()


def _extra_optimizers(task) -> dict[str, torch.optim.Optimizer]:
    return getattr(task, "extra_optimizers", dict)()


def _tensorboard(run_dir: str):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(os.path.join(run_dir, "tensorboard"))


def _progress_bar(cfg: TrainConfig, info: dist.DistInfo, start: int):
    if not (cfg.progress and info.is_main):
        return None
    from tqdm import tqdm

    return tqdm(
        total=cfg.max_steps,
        initial=start,
        desc=f"train {cfg.kind}",
        unit="step",
        dynamic_ncols=True,
    )


def _optimizer_state(
    model: nn.Module, optimizer: torch.optim.Optimizer, fsdp: bool
) -> dict[str, Any]:
    if fsdp:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
        )

        return get_optimizer_state_dict(
            model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
    return optimizer.state_dict()


def _load_optimizer(
    model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any], fsdp: bool
) -> None:
    if fsdp:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        set_optimizer_state_dict(
            model, optimizer, state, options=StateDictOptions(full_state_dict=True)
        )
    else:
        optimizer.load_state_dict(state)


def _gather_rng(generator: torch.Generator, info: dist.DistInfo) -> list[dict[str, Any]]:
    """Every rank's RNG states, in rank order (each rank resumes its own streams)."""
    mine = rng_state({"train": generator})
    if not info.distributed:
        return [mine]
    import torch.distributed as torch_dist

    gathered: list[Any] = [None] * info.world_size
    torch_dist.all_gather_object(gathered, mine)
    return gathered


def _save(
    task,
    model,
    ema,
    optimizer,
    scheduler,
    generator,
    position,
    cfg,
    info,
    run_dir,
    step,
    lora,
    fsdp,
) -> str | None:
    if hasattr(task, "before_checkpoint") and not fsdp:
        task.before_checkpoint(dist.unwrap(model))
    # Collectives first, on every rank; then rank 0 writes.
    rngs = _gather_rng(generator, info)
    opt_state = _optimizer_state(model, optimizer, fsdp)
    if lora:
        from songmill.train.lora import adapter_state_dict

        networks = {
            "dit_lora": (
                adapter_state_dict(model),
                {
                    "rank": cfg.lora_rank,
                    "alpha": cfg.lora_alpha,
                    "targets": list(cfg.lora_targets),
                    "dropout": cfg.lora_dropout,
                    "base_checkpoint": os.path.abspath(cfg.base_checkpoint),
                    "dit": task.config_dict,
                },
            )
        }
    else:
        networks = {task.name: (dist.full_state_dict(model), task.config_dict)}
        if ema is not None:
            networks[f"{task.name}_ema"] = (ema.full_state(model), task.config_dict)
    for name, net in _extra_networks(task).items():
        networks[name] = (net, {})
    if not info.is_main:
        dist.barrier(info)
        return None
    state: dict[str, Any] = {
        "optimizer": opt_state,
        "scheduler": scheduler.state_dict(),
        "rng": rngs,
    }
    for name, opt in _extra_optimizers(task).items():
        state[name] = opt.state_dict()
    trainer = {
        "kind": cfg.kind,
        "config": cfg.hashed_fields(),
        "config_hash": cfg.config_hash(),
        "full_config": cfg.to_dict(),
        "data_position": position.to_dict(),
        "world_size": info.world_size,
        "conditioning": task.conditioning,
        "lora": lora,
    }
    path = save_checkpoint(run_dir, step, networks, state, trainer, keep=cfg.keep_checkpoints)
    dist.barrier(info)
    return path


def _validate(task, model, ema, cfg, info, sample_dir, step, device) -> dict[str, str] | None:
    """A sample from the EMA weights (the live ones under LoRA), written by rank 0."""
    weights = ema.full_state(model) if ema is not None else None  # collective under FSDP
    if not info.is_main:
        return None
    # Building the copy and sampling must not move the global RNG: the run would then depend on
    # val_every, which is not part of the run's identity.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        net = dist.unwrap(model)
        if weights is not None:
            net = type(net)(net.cfg)
            net.load_state_dict(weights)
            net.to(device)
        was_training = net.training
        net.eval()
        try:
            with torch.no_grad():
                return task.validate(net, sample_dir, step, device) or None
        finally:
            net.train(was_training)
