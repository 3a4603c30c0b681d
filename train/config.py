"""Training settings: one dataclass for both networks, read from TOML / JSON and the command line.

Fields marked RUNTIME (how often to log, how many loader workers, when to stop this invocation)
do not change the trajectory of a run and so stay out of `config_hash`; every other change is a
different run, and `--resume` refuses it unless forced.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from songmill.annotate.base import RUNTIME
from songmill.annotate.settings import coerce_settings


class TrainConfigError(ValueError):
    pass


@dataclass
class TrainConfig:
    kind: str = "dit"  # dit | dcae
    preset: str = "tiny"
    seed: int = 0

    # Optimisation: AdamW, linear warm-up from 0, then linear / cosine decay to min_lr_ratio * lr.
    # Defaults are ACE-Step v1's trainer.py: betas (0.8, 0.9), weight decay 1e-2, 10 warm-up
    # steps, linear decay to 0, gradient norm clipped at 0.5. (Before: (0.9, 0.999), 100 warm-up
    # steps, cosine to 0.1, clip 1.0; still available as settings.)
    lr: float = 1e-4
    betas: tuple[float, float] = (0.8, 0.9)
    weight_decay: float = 0.01
    warmup_steps: int = 10
    decay: str = "linear"  # linear | cosine | constant
    min_lr_ratio: float = 0.0
    max_steps: int = 1000
    batch_size: int = 4
    grad_accum: int = 1
    grad_clip: float = 0.5
    ema_decay: float = 0.999

    # Data: crops up to max_crop_s, length buckets of bucket_s seconds. lyric_crop:
    # "timestamps" = random crop, lyrics sliced to the crop by their timestamps (tracks without
    # timestamps are cropped from the start with their full lyrics); "start" = every crop starts
    # at 0 with the full lyrics (ACE-Step); "full" = random crop, full lyrics (the old behaviour).
    max_crop_s: float = 240.0
    min_crop_s: float = 1.0
    bucket_s: float = 30.0
    lyric_crop: str = "timestamps"

    # Speed switches (numerically close, not identical, so they stay hashed except compile).
    precision: str = "auto"  # auto (bf16 autocast on GPU, fp32 on CPU) | bf16 | fp32
    grad_checkpointing: bool = False
    compile: bool = field(default=False, metadata=RUNTIME)

    # DiT: flow matching with logit-normal timesteps, classifier-free dropout, REPA.
    # loss_space "x0" (ACE-Step): the prediction becomes x0 = x_t - sigma * v and is compared
    # with x0, a sigma^2-weighted velocity loss; "velocity": plain velocity MSE.
    loss_space: str = "x0"
    timestep_shift: float = 3.0
    cfg_p_text: float = 0.15
    cfg_p_lyrics: float = 0.15
    cfg_p_speaker: float = 0.5
    # A dropped lyric also gets an all-False mask (ACE-Step), so the unconditional branch cannot
    # learn the lyric length from the mask.
    cfg_drop_lyric_mask: bool = True
    repa_weight: float = 1.0
    repa_reduce: str = "mean"  # mean (ACE-Step) | sum of the per-target REPA losses
    dcae_checkpoint: str = ""  # DCAE run / checkpoint dir: decodes validation samples

    # DCAE: phase 1 reconstruction, phase 2 decoder-only adversarial.
    dcae_phase: int = 1
    spectral_weight: float = 1.0
    adv_weight: float = 0.1
    feature_match_weight: float = 2.0
    disc_lr: float = 2e-4
    # weights to fine-tune (a run, checkpoint or imported dir): the DCAE's (phase 2 starts from
    # the phase-1 run) or, for kind dit, the DiT's (its own config replaces the preset's)
    init_from: str = ""
    # The latent shift / scale buffers: "calibrate" sets them from the last batch at each
    # checkpoint (latents ~N(0, 1) for the DiT); "fixed" keeps the DCAE's (ACE-Step's constants,
    # or those of the weights it starts from); "auto": fixed when starting from weights
    # (init_from), calibrate for a DCAE trained from scratch.
    dcae_latent_stats: str = "auto"

    # LoRA on the DiT (rank 0 = full fine-tuning).
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    # Module names (suffixes) to adapt: ACE-Step's LoRA targets (zh_rap_lora_config.json): the
    # speaker projection, the lyric encoder's and every block's attention projections.
    lora_targets: list[str] = field(
        default_factory=lambda: [
            "speaker_embedder",
            "linear_q",
            "linear_k",
            "linear_v",
            "to_q",
            "to_k",
            "to_v",
            "to_out.0",
        ]
    )
    base_checkpoint: str = ""  # DiT weights LoRA adapts

    # Distributed: "auto" = FSDP for the base preset, DDP otherwise.
    strategy: str = field(default="auto", metadata=RUNTIME)

    # Bookkeeping.
    num_workers: int = field(default=0, metadata=RUNTIME)
    log_every: int = field(default=10, metadata=RUNTIME)
    ckpt_every: int = field(default=500, metadata=RUNTIME)
    keep_checkpoints: int = field(default=2, metadata=RUNTIME)
    val_every: int = field(default=500, metadata=RUNTIME)
    val_steps: int = field(default=10, metadata=RUNTIME)
    val_duration_s: float = field(default=10.0, metadata=RUNTIME)
    val_guidance: float = field(default=5.0, metadata=RUNTIME)
    val_sampler: str = field(default="acestep", metadata=RUNTIME)  # a model.flow.SAMPLERS name
    griffin_lim_iters: int = field(default=32, metadata=RUNTIME)
    progress: bool = field(default=True, metadata=RUNTIME)
    # Stop this invocation after this optimizer step (0: run to max_steps), checkpointing first.
    stop_at_step: int = field(default=0, metadata=RUNTIME)
    device: str = field(default="auto", metadata=RUNTIME)
    # Debugging / tests: each rank appends the track ids of its batches and, at the end, a digest
    # of its weights to <run_dir>/trace-rank<r>.jsonl.
    trace: bool = field(default=False, metadata=RUNTIME)

    def hashed_fields(self) -> dict[str, Any]:
        return {
            f.name: _jsonable(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if not f.metadata.get("runtime", False)
        }

    def config_hash(self) -> str:
        blob = json.dumps(self.hashed_fields(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        return cls().updated(values)

    def updated(self, values: dict[str, Any]) -> TrainConfig:
        """A copy with `values` applied; unknown keys and wrong types are errors."""
        coerced = coerce_settings(type(self), values, "[train]", TrainConfigError)
        config = dataclasses.replace(self, **coerced)
        config.validate()
        return config

    def validate(self) -> None:
        if self.kind not in ("dit", "dcae"):
            raise TrainConfigError(f"kind must be dit or dcae, got {self.kind!r}")
        if self.decay not in ("cosine", "linear", "constant"):
            raise TrainConfigError(f"decay must be cosine, linear or constant, got {self.decay!r}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise TrainConfigError(f"precision must be auto, bf16 or fp32, got {self.precision!r}")
        if self.dcae_phase not in (1, 2):
            raise TrainConfigError(f"dcae_phase must be 1 or 2, got {self.dcae_phase}")
        if self.batch_size < 1 or self.grad_accum < 1 or self.max_steps < 1:
            raise TrainConfigError("batch_size, grad_accum and max_steps must be >= 1")
        if self.strategy not in ("auto", "ddp", "fsdp"):
            raise TrainConfigError(f"strategy must be auto, ddp or fsdp, got {self.strategy!r}")
        if self.kind == "dit" and self.lora_rank > 0 and self.strategy == "fsdp":
            raise TrainConfigError(
                "LoRA training does not run under FSDP (it would shard the adapters); "
                "use strategy=ddp, or auto (DDP for LoRA)"
            )
        choices = {
            "loss_space": ("x0", "velocity"),
            "repa_reduce": ("mean", "sum"),
            "lyric_crop": ("timestamps", "start", "full"),
            "dcae_latent_stats": ("auto", "fixed", "calibrate"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise TrainConfigError(
                    f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}"
                )


# What runs saved before a setting existed did: a checkpoint lacking the key resumes with this
# value, so an old run goes on exactly as it started (not with today's defaults).
LEGACY_VALUES: dict[str, Any] = {
    "loss_space": "velocity",
    "repa_reduce": "sum",
    "cfg_drop_lyric_mask": False,
    "lyric_crop": "full",
    "val_sampler": "euler",
    "dcae_latent_stats": "calibrate",
}


def with_legacy_values(saved: dict[str, Any], hashed_only: bool = False) -> dict[str, Any]:
    """A saved config (trainer.json) completed with LEGACY_VALUES for the keys it predates
    (`hashed_only`: only those that are part of config_hash, for its "config" record)."""
    runtime = {f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("runtime", False)}
    legacy = {
        k: v
        for k, v in LEGACY_VALUES.items()
        if k not in saved and not (hashed_only and k in runtime)
    }
    return {**legacy, **saved}


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
