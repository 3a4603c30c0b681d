"""ACE-Step v1 parity: read and write the release's checkpoint layout, and run its contracts.

A release directory holds any of

    ace_step_transformer/   config.json + diffusion_pytorch_model.safetensors  (the DiT)
    music_dcae_f8c8/        config.json + diffusion_pytorch_model.safetensors  (diffusers AutoencoderDC)
    music_vocoder/          config.json + diffusion_pytorch_model.safetensors  (ADaMoS HiFi-GAN)
    umt5-base/              a transformers UMT5 checkpoint (the frozen text encoder)

songmill's modules carry the release's module names, so the weights map key for key; what this
module adds is the config translation, a check of every key and shape (naming what is missing,
unexpected or mis-shaped), and refusing pickles. The Python contract:

- `load_dit(src) -> LinearDiT`, `reference_forward(dit, **ACEStepTransformer2DModel.forward
  kwargs) -> the tensor the reference's .sample holds`;
- `load_dcae(src)` with `encode(mel)` / `decode(latent)` as the release's MusicDCAE;
- `log_mel(audio)` equal to the release's `music_log_mel.LogMelSpectrogram`;
- `load_vocoder(src)`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from songmill.model.conditions import Conditions
from songmill.model.config import DiTConfig, LyricEncoderConfig
from songmill.model.weights import PICKLE_SUFFIXES, WeightsMismatch, WeightsMissing
from torch import nn

TRANSFORMER_DIR = "ace_step_transformer"
DCAE_DIR = "music_dcae_f8c8"
VOCODER_DIR = "music_vocoder"
TEXT_ENCODER_DIR = "umt5-base"
RELEASE_PARTS = (TRANSFORMER_DIR, DCAE_DIR, VOCODER_DIR, TEXT_ENCODER_DIR)
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
CONFIG_FILE = "config.json"
LORA_FILE = "pytorch_lora_weights.safetensors"

# ACE-Step names its REPA targets "mert" / "m-hubert"; songmill's feature shards "mert" / "mhubert"
_SSL_TO_SONGMILL = {"m-hubert": "mhubert"}
_SONGMILL_TO_SSL = {v: k for k, v in _SSL_TO_SONGMILL.items()}
# diffusers builds these for the cross-attention but ACE-Step's processor never uses them; they
# are kept beside the songmill checkpoint so an export gives the release's file back
_UNUSED_CROSS_ATTENTION = re.compile(r"transformer_blocks\.\d+\.cross_attn\.(add_q_proj|add_k_proj|add_v_proj|to_add_out)\.")
# ACE-Step's constructor fixes these sizes (the config cannot change them)
ACESTEP_LYRIC_ENCODER = {"width": 1024, "heads": 16, "ffn": 4096, "depth": 6}


class ReleaseFormatError(ValueError):
    """A release directory that is not what ACE-Step v1 ships (wrong files, keys or shapes)."""


# -- files ------------------------------------------------------------------------------------


def part_dir(src: str | Path, part: str) -> Path:
    """`src/part` when src is a release root, or src itself when it is that part's directory."""
    src = Path(src)
    if (src / part / CONFIG_FILE).exists() or (src / part).is_dir():
        return src / part
    return src


def refuse_pickles(directory: Path) -> None:
    pickles = sorted(p.name for p in directory.iterdir() if p.name.endswith(PICKLE_SUFFIXES))
    safetensors = [p for p in directory.iterdir() if p.name.endswith(".safetensors")]
    if pickles and not safetensors:
        raise ReleaseFormatError(
            f"{directory}: only pickle weights {pickles}; songmill reads safetensors only (loading a "
            "pickle can run code): download the safetensors files of the release instead"
        )


def read_part(directory: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config.json, tensors) of one release part; sharded safetensors (an index.json) are joined."""
    from safetensors.torch import load_file

    directory = Path(directory)
    if not directory.is_dir():
        raise WeightsMissing(f"{directory} not found: put the ACE-Step v1 download there")
    refuse_pickles(directory)
    config_path = directory / CONFIG_FILE
    if not config_path.exists():
        raise ReleaseFormatError(f"{directory}: no {CONFIG_FILE}")
    config = json.loads(config_path.read_text())
    index = directory / f"{WEIGHTS_FILE}.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = [WEIGHTS_FILE] if (directory / WEIGHTS_FILE).exists() else sorted(
            p.name for p in directory.glob("*.safetensors")
        )
    if not files:
        raise WeightsMissing(f"{directory}: no safetensors weights ({WEIGHTS_FILE})")
    tensors: dict[str, torch.Tensor] = {}
    for name in files:
        tensors.update(load_file(str(directory / name)))
    return config, tensors


def write_part(directory: str | Path, config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> Path:
    """config.json + diffusion_pytorch_model.safetensors, each written atomically."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / WEIGHTS_FILE
    tmp = weights.with_suffix(".safetensors.tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in sorted(tensors.items())}, str(tmp),
              metadata={"format": "pt"})
    tmp.replace(weights)
    config_tmp = directory / f"{CONFIG_FILE}.tmp"
    config_tmp.write_text(json.dumps(dict(config), indent=2, sort_keys=True) + "\n")
    config_tmp.replace(directory / CONFIG_FILE)
    return weights


def check_keys(
    where: str, expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor]
) -> None:
    """Raise WeightsMismatch naming every missing, unexpected and mis-shaped tensor."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(
        f"{k}: file {tuple(found[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(found)
        if tuple(found[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or wrong:
        parts = []
        for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if names:
                shown = ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
                parts.append(f"{label}: {shown}")
        raise WeightsMismatch(f"{where}: " + "; ".join(parts))


def _meta_state(module_factory) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return dict(module_factory().state_dict())


# -- DiT --------------------------------------------------------------------------------------


def dit_config_from_release(config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> DiTConfig:
    """songmill's DiTConfig for a release transformer; sizes the config cannot say (lyric
    encoder, patch hidden width) are read off the weight shapes."""

    def shape(key: str) -> tuple[int, ...]:
        if key not in tensors:
            raise WeightsMismatch(f"{TRANSFORMER_DIR}: missing {key}")
        return tuple(tensors[key].shape)

    depths = list(config.get("ssl_encoder_depths", [8, 8]))
    if len(set(depths)) > 1:
        raise ReleaseFormatError(f"ssl_encoder_depths {depths}: songmill takes every REPA target after one block")
    names = [_SSL_TO_SONGMILL.get(n, n) for n in config.get("ssl_names", ["mert", "m-hubert"])]
    dims = list(config.get("ssl_latent_dims", [1024, 768]))
    lyric_width, token_dim = shape("lyric_encoder.embed.out.0.weight")
    layers = {int(m.group(1)) for k in tensors if (m := re.match(r"lyric_encoder\.encoders\.(\d+)\.", k))}
    heads = shape("lyric_encoder.encoders.0.self_attn.pos_bias_u")[0] if layers else 1
    ffn = shape("lyric_encoder.encoders.0.feed_forward.w_1.weight")[0] if layers else 4 * lyric_width
    vocab = shape("lyric_embs.weight")[0]
    width = int(config.get("num_attention_heads", 24)) * int(config.get("attention_head_dim", 64))
    repa_hidden = shape("projectors.0.0.weight")[0] if dims else 2 * width
    patch = [int(p) for p in config.get("patch_size", [16, 1])]
    if patch[1] != 1:
        raise ReleaseFormatError(f"patch_size {patch}: songmill's DiT takes one frame per token")
    return DiTConfig(
        in_channels=int(config.get("in_channels", 8)),
        latent_height=patch[0],
        width=width,
        depth=int(config.get("num_layers", 28)),
        heads=int(config.get("num_attention_heads", 24)),
        head_dim=int(config.get("attention_head_dim", 64)),
        ffn_ratio=float(config.get("mlp_ratio", 4.0)),
        text_dim=int(config.get("text_embedding_dim", 768)),
        speaker_dim=int(config.get("speaker_embedding_dim", 512)),
        lyrics=LyricEncoderConfig(
            kind="espnet", vocab_size=vocab, embed_dim=token_dim if token_dim != lyric_width else 0,
            width=lyric_width, depth=len(layers), heads=heads, ffn_ratio=ffn / lyric_width,
        ),
        patch_embed="conv",
        patch_hidden=shape("proj_in.early_conv_layers.0.weight")[0],
        rope_theta=float(config.get("rope_theta", 1e6)),
        rope_layout="interleaved",
        cross_attention_rope=True,
        cross_attention_norm=False,
        strict_padding=False,
        output_order="row_channel",
        timestep_freq_dim=256,
        repa_block=depths[0] + 1 if depths else 1,
        repa_hidden=repa_hidden,
        repa_targets=dict(zip(names, (int(d) for d in dims), strict=True)),
        linear_attention_eps=1e-15,
    )


def acestep_incompatibilities(cfg: DiTConfig) -> tuple[list[str], list[str]]:
    """(blocking, sizes): choices ACE-Step's transformer cannot run at all, and sizes its
    constructor cannot be told (the weights still load into a reference built with them)."""
    blocking = []
    wanted = {
        "patch_embed": "conv", "rope_layout": "interleaved", "cross_attention_rope": True,
        "cross_attention_norm": False, "output_order": "row_channel", "timestep_freq_dim": 256,
        "linear_attention_eps": 1e-15,
    }
    for name, value in wanted.items():
        if getattr(cfg, name) != value:
            blocking.append(f"{name}={getattr(cfg, name)!r} (ACE-Step: {value!r})")
    if cfg.lyrics.kind != "espnet":
        blocking.append(f"lyrics.kind={cfg.lyrics.kind!r} (ACE-Step: 'espnet')")
    sizes = []
    if cfg.patch_hidden != cfg.in_channels * 256:
        sizes.append(f"patch_hidden={cfg.patch_hidden} (ACE-Step builds in_channels x 256)")
    lyric = {"width": cfg.lyrics.width, "heads": cfg.lyrics.heads,
             "ffn": int(cfg.lyrics.width * cfg.lyrics.ffn_ratio), "depth": cfg.lyrics.depth}
    if lyric != ACESTEP_LYRIC_ENCODER:
        sizes.append(f"lyric encoder {lyric} (ACE-Step builds {ACESTEP_LYRIC_ENCODER})")
    if cfg.repa_width != 2 * cfg.width:
        sizes.append(f"repa_hidden={cfg.repa_width} (ACE-Step builds 2 x width)")
    return blocking, sizes


def dit_config_to_release(cfg: DiTConfig) -> dict[str, Any]:
    """The release's config.json for a songmill DiT config (ACE-Step ignores the songmill_* keys)."""
    depth = cfg.repa_block - 1
    return {
        "_class_name": "ACEStepTransformer2DModel",
        "in_channels": cfg.in_channels,
        "num_layers": cfg.depth,
        "inner_dim": cfg.heads * cfg.head_dim,
        "attention_head_dim": cfg.head_dim,
        "num_attention_heads": cfg.heads,
        "mlp_ratio": cfg.ffn_ratio,
        "out_channels": cfg.in_channels,
        "max_position": 32768,
        "rope_theta": cfg.rope_theta,
        "speaker_embedding_dim": cfg.speaker_dim,
        "text_embedding_dim": cfg.text_dim,
        "ssl_encoder_depths": [depth] * len(cfg.repa_targets),
        "ssl_names": [_SONGMILL_TO_SSL.get(n, n) for n in cfg.repa_targets],
        "ssl_latent_dims": list(cfg.repa_targets.values()),
        "patch_size": [cfg.latent_height, 1],
        "max_height": cfg.latent_height,
        "max_width": 32768,
        "lyric_encoder_vocab_size": cfg.lyrics.vocab_size,
        "lyric_hidden_size": cfg.lyrics.token_dim,
        "songmill_lyric_encoder": {
            "output_size": cfg.lyrics.width, "attention_heads": cfg.lyrics.heads,
            "linear_units": int(cfg.lyrics.width * cfg.lyrics.ffn_ratio), "num_blocks": cfg.lyrics.depth,
        },
    }


def split_release_dit(
    tensors: Mapping[str, torch.Tensor], cfg: DiTConfig
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(songmill state dict, the release's unused cross-attention tensors), every key checked."""
    from songmill.model.dit import LinearDiT

    unused = {k: v for k, v in tensors.items() if _UNUSED_CROSS_ATTENTION.match(k)}
    state = {k: v for k, v in tensors.items() if k not in unused}
    check_keys(TRANSFORMER_DIR, _meta_state(lambda: LinearDiT(cfg)), state)
    return state, unused


def unused_cross_attention_shapes(cfg: DiTConfig) -> dict[str, tuple[int, ...]]:
    inner, width = cfg.heads * cfg.head_dim, cfg.width
    shapes: dict[str, tuple[int, ...]] = {}
    for block in range(cfg.depth):
        prefix = f"transformer_blocks.{block}.cross_attn."
        for name in ("add_q_proj", "add_k_proj", "add_v_proj"):
            shapes[f"{prefix}{name}.weight"], shapes[f"{prefix}{name}.bias"] = (inner, width), (inner,)
        shapes[f"{prefix}to_add_out.weight"], shapes[f"{prefix}to_add_out.bias"] = (width, inner), (width,)
    return shapes


def load_dit(src: str | Path) -> nn.Module:
    """A songmill LinearDiT holding a release transformer (`src` = release root or its part dir)."""
    from songmill.model.dit import LinearDiT

    config, tensors = read_part(part_dir(src, TRANSFORMER_DIR))
    cfg = dit_config_from_release(config, tensors)
    state, _ = split_release_dit(tensors, cfg)
    dit = LinearDiT(cfg)
    dit.load_state_dict(state, strict=True)
    return dit.eval()


def export_dit_tensors(dit: nn.Module, unused: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The release's tensor set for a songmill DiT: its state dict plus the unused cross-attention
    projections (the imported ones when known, zeros otherwise: ACE-Step never reads them)."""
    tensors = {k: v.detach().cpu() for k, v in dit.state_dict().items()}
    unused = dict(unused or {})
    for key, shape in unused_cross_attention_shapes(dit.cfg).items():
        value = unused.get(key)
        tensors[key] = value if value is not None and tuple(value.shape) == shape else torch.zeros(shape)
    return tensors


def reference_forward(
    dit: nn.Module,
    *,
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor,
    encoder_text_hidden_states: torch.Tensor,
    text_attention_mask: torch.Tensor,
    speaker_embeds: torch.Tensor,
    lyric_token_idx: torch.Tensor,
    lyric_mask: torch.Tensor,
    timestep: torch.Tensor,
) -> torch.Tensor:
    """ACEStepTransformer2DModel.forward(...).sample for a songmill DiT: the same keyword
    arguments (hidden_states (B, 8, 16, T), masks as 0/1, timestep (B,) on the 0-1000 scale)."""
    cond = Conditions(
        text=encoder_text_hidden_states,
        text_mask=text_attention_mask.bool(),
        lyrics=lyric_token_idx.long(),
        lyrics_mask=lyric_mask.bool(),
        speaker=speaker_embeds,
    )
    timestep = torch.as_tensor(timestep, device=hidden_states.device).float().reshape(-1)
    return dit.denoise(hidden_states, timestep.expand(hidden_states.shape[0]), cond,
                       frame_mask=attention_mask.bool(), return_repa=False).sample
