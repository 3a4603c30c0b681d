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
_UNUSED_CROSS_ATTENTION = re.compile(
    r"transformer_blocks\.\d+\.cross_attn\.(add_q_proj|add_k_proj|add_v_proj|to_add_out)\."
)
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
        files = (
            [WEIGHTS_FILE]
            if (directory / WEIGHTS_FILE).exists()
            else sorted(p.name for p in directory.glob("*.safetensors"))
        )
    if not files:
        raise WeightsMissing(f"{directory}: no safetensors weights ({WEIGHTS_FILE})")
    tensors: dict[str, torch.Tensor] = {}
    for name in files:
        tensors.update(load_file(str(directory / name)))
    return config, tensors


def write_part(
    directory: str | Path, config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]
) -> Path:
    """config.json + diffusion_pytorch_model.safetensors, each written atomically."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / WEIGHTS_FILE
    tmp = weights.with_suffix(".safetensors.tmp")
    save_file(
        {k: v.detach().contiguous().cpu() for k, v in sorted(tensors.items())},
        str(tmp),
        metadata={"format": "pt"},
    )
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
        for label, names in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("wrong shape", wrong),
        ):
            if names:
                shown = ", ".join(names[:8]) + (
                    f", ... ({len(names)} in all)" if len(names) > 8 else ""
                )
                parts.append(f"{label}: {shown}")
        raise WeightsMismatch(f"{where}: " + "; ".join(parts))


def _meta_state(module_factory) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return dict(module_factory().state_dict())


# -- DiT --------------------------------------------------------------------------------------


def dit_config_from_release(
    config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]
) -> DiTConfig:
    """songmill's DiTConfig for a release transformer; sizes the config cannot say (lyric
    encoder, patch hidden width) are read off the weight shapes."""

    def shape(key: str) -> tuple[int, ...]:
        if key not in tensors:
            raise WeightsMismatch(f"{TRANSFORMER_DIR}: missing {key}")
        return tuple(tensors[key].shape)

    depths = list(config.get("ssl_encoder_depths", [8, 8]))
    if len(set(depths)) > 1:
        raise ReleaseFormatError(
            f"ssl_encoder_depths {depths}: songmill takes every REPA target after one block"
        )
    names = [_SSL_TO_SONGMILL.get(n, n) for n in config.get("ssl_names", ["mert", "m-hubert"])]
    dims = list(config.get("ssl_latent_dims", [1024, 768]))
    lyric_width, token_dim = shape("lyric_encoder.embed.out.0.weight")
    layers = {
        int(m.group(1)) for k in tensors if (m := re.match(r"lyric_encoder\.encoders\.(\d+)\.", k))
    }
    heads = shape("lyric_encoder.encoders.0.self_attn.pos_bias_u")[0] if layers else 1
    ffn = (
        shape("lyric_encoder.encoders.0.feed_forward.w_1.weight")[0] if layers else 4 * lyric_width
    )
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
            kind="espnet",
            vocab_size=vocab,
            embed_dim=token_dim if token_dim != lyric_width else 0,
            width=lyric_width,
            depth=len(layers),
            heads=heads,
            ffn_ratio=ffn / lyric_width,
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
        "patch_embed": "conv",
        "rope_layout": "interleaved",
        "cross_attention_rope": True,
        "cross_attention_norm": False,
        "output_order": "row_channel",
        "timestep_freq_dim": 256,
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
    lyric = {
        "width": cfg.lyrics.width,
        "heads": cfg.lyrics.heads,
        "ffn": int(cfg.lyrics.width * cfg.lyrics.ffn_ratio),
        "depth": cfg.lyrics.depth,
    }
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
            "output_size": cfg.lyrics.width,
            "attention_heads": cfg.lyrics.heads,
            "linear_units": int(cfg.lyrics.width * cfg.lyrics.ffn_ratio),
            "num_blocks": cfg.lyrics.depth,
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
            shapes[f"{prefix}{name}.weight"], shapes[f"{prefix}{name}.bias"] = (
                (inner, width),
                (inner,),
            )
        shapes[f"{prefix}to_add_out.weight"], shapes[f"{prefix}to_add_out.bias"] = (
            (width, inner),
            (width,),
        )
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


def export_dit_tensors(
    dit: nn.Module, unused: Mapping[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """The release's tensor set for a songmill DiT: its state dict plus the unused cross-attention
    projections (the imported ones when known, zeros otherwise: ACE-Step never reads them)."""
    tensors = {k: v.detach().cpu() for k, v in dit.state_dict().items()}
    unused = dict(unused or {})
    for key, shape in unused_cross_attention_shapes(dit.cfg).items():
        value = unused.get(key)
        tensors[key] = (
            value if value is not None and tuple(value.shape) == shape else torch.zeros(shape)
        )
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
    return dit.denoise(
        hidden_states,
        timestep.expand(hidden_states.shape[0]),
        cond,
        frame_mask=attention_mask.bool(),
        return_repa=False,
    ).sample


# -- DCAE -------------------------------------------------------------------------------------

ACESTEP_LATENT_SHIFT, ACESTEP_LATENT_SCALE = -1.9091, 0.1786  # music_dcae_pipeline.py
_BLOCK_TYPES = {"ResBlock": "res", "EfficientViTBlock": "vit"}
_DCAE_BUFFERS = ("latent_shift", "latent_scale")  # songmill keeps ACE-Step's constants as buffers


def _per_stage(value: Any, stages: int) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value] * stages


def dcae_config_from_release(config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]):
    """songmill's DCAEConfig for a release AutoencoderDC (music_dcae_f8c8/config.json)."""
    from songmill.model.config import DCAEConfig

    widths = list(config["encoder_block_out_channels"])
    stages = len(widths)
    if list(config.get("decoder_block_out_channels", widths)) != widths:
        raise ReleaseFormatError("encoder and decoder widths differ; songmill's DCAE mirrors them")
    enc_types = _per_stage(config.get("encoder_block_types", "ResBlock"), stages)
    dec_types = _per_stage(config.get("decoder_block_types", "ResBlock"), stages)
    if enc_types != dec_types or any(t not in _BLOCK_TYPES for t in enc_types):
        raise ReleaseFormatError(
            f"block types {enc_types} / {dec_types}: songmill takes ResBlock / EfficientViTBlock, mirrored"
        )
    checks = {
        "upsample_block_type": "interpolate",
        "downsample_block_type": "Conv",
        "encoder_out_shortcut": True,
        "decoder_in_shortcut": True,
        "decoder_conv_act_fn": "relu",
    }
    for key, wanted in checks.items():
        if config.get(key, wanted) != wanted:
            raise ReleaseFormatError(
                f"{DCAE_DIR}: {key}={config.get(key)!r}, songmill's DCAE implements {wanted!r}"
            )
    for key, wanted in (("decoder_norm_types", "rms_norm"), ("decoder_act_fns", "silu")):
        if set(_per_stage(config.get(key, wanted), stages)) != {wanted}:
            raise ReleaseFormatError(
                f"{DCAE_DIR}: {key}={config.get(key)!r}, songmill's DCAE implements {wanted!r}"
            )
    kernels = set()
    for types_key, scales_key in (
        ("encoder_block_types", "encoder_qkv_multiscales"),
        ("decoder_block_types", "decoder_qkv_multiscales"),
    ):
        for block, scales in zip(
            _per_stage(config.get(types_key), stages),
            config.get(scales_key, [[5]] * stages),
            strict=True,
        ):
            if block == "EfficientViTBlock":
                if len(scales) != 1:
                    raise ReleaseFormatError(
                        f"{scales_key} {scales}: songmill takes one multiscale kernel"
                    )
                kernels.add(int(scales[0]))
    if len(kernels) > 1:
        raise ReleaseFormatError(f"multiscale kernels {sorted(kernels)} differ between stages")
    expand = 4
    for key, value in tensors.items():
        if key.endswith("conv_out.conv_inverted.weight"):
            expand = value.shape[0] // (2 * value.shape[1])
            break
    return DCAEConfig(
        in_channels=int(config.get("in_channels", 2)),
        latent_channels=int(config.get("latent_channels", 8)),
        widths=tuple(widths),
        encoder_depths=tuple(config["encoder_layers_per_block"]),
        decoder_depths=tuple(config["decoder_layers_per_block"]),
        block_types=tuple(_BLOCK_TYPES[t] for t in enc_types),
        attention_head_dim=int(config.get("attention_head_dim", 32)),
        qkv_multiscale_kernel=kernels.pop() if kernels else 5,
        ffn_expand=expand,
        latent_shift=ACESTEP_LATENT_SHIFT,
        latent_scale=ACESTEP_LATENT_SCALE,
    )


def dcae_config_to_release(cfg) -> dict[str, Any]:
    types = [{"res": "ResBlock", "vit": "EfficientViTBlock"}[t] for t in cfg.block_types]
    scales = [[cfg.qkv_multiscale_kernel] if t == "vit" else [] for t in cfg.block_types]
    return {
        "_class_name": "AutoencoderDC",
        "in_channels": cfg.in_channels,
        "latent_channels": cfg.latent_channels,
        "attention_head_dim": cfg.attention_head_dim,
        "encoder_block_types": types,
        "decoder_block_types": types,
        "encoder_block_out_channels": list(cfg.widths),
        "decoder_block_out_channels": list(cfg.widths),
        "encoder_layers_per_block": list(cfg.encoder_depths),
        "decoder_layers_per_block": list(cfg.decoder_depths),
        "encoder_qkv_multiscales": scales,
        "decoder_qkv_multiscales": scales,
        "upsample_block_type": "interpolate",
        "downsample_block_type": "Conv",
        "decoder_norm_types": "rms_norm",
        "decoder_act_fns": "silu",
        "encoder_out_shortcut": True,
        "decoder_in_shortcut": True,
        "decoder_conv_act_fn": "relu",
        "scaling_factor": 1.0,
    }


def dcae_state_from_release(tensors: Mapping[str, torch.Tensor], cfg) -> dict[str, torch.Tensor]:
    from songmill.model.dcae import MusicDCAE

    expected = {
        k: v for k, v in _meta_state(lambda: MusicDCAE(cfg)).items() if k not in _DCAE_BUFFERS
    }
    check_keys(DCAE_DIR, expected, tensors)
    return {
        **tensors,
        "latent_shift": torch.tensor(cfg.latent_shift),
        "latent_scale": torch.tensor(cfg.latent_scale),
    }


class ReleaseDCAE(nn.Module):
    """The release's MusicDCAE contract around songmill's DCAE: `encode(log_mel) -> latent` and
    `decode(latent) -> log_mel` (natural-log mel as `log_mel` gives it, latents scaled with
    ACE-Step's fixed (z + 1.9091) x 0.1786)."""

    def __init__(self, dcae: nn.Module, mel_cfg=None) -> None:
        super().__init__()
        from songmill.model.config import MelConfig
        from songmill.model.mel import MelSpectrogram

        self.dcae = dcae.eval()
        self.front = MelSpectrogram(mel_cfg or MelConfig())

    def encode(self, mel: torch.Tensor) -> torch.Tensor:
        return self.dcae.encode(self.front.scale(mel))

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return self.front.unscale(self.dcae.decode(latent))

    def encode_audio(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, 2, T) 44.1 kHz -> latent; audio zero-padded to whole latent frames as the release."""
        block = 8 * self.front.cfg.hop_length
        audio = torch.nn.functional.pad(audio, (0, (-audio.shape[-1]) % block))
        from songmill.model.mel import log_mel

        return self.encode(log_mel(audio, self.front.cfg))


def load_dcae(src: str | Path) -> ReleaseDCAE:
    """songmill's DCAE holding a release music_dcae_f8c8 (`src` = release root or its part dir)."""
    from songmill.model.dcae import MusicDCAE

    config, tensors = read_part(part_dir(src, DCAE_DIR))
    cfg = dcae_config_from_release(config, tensors)
    dcae = MusicDCAE(cfg)
    dcae.load_state_dict(dcae_state_from_release(tensors, cfg), strict=True)
    return ReleaseDCAE(dcae)


# -- vocoder ----------------------------------------------------------------------------------

_VOCODER_DERIVED = ("mel_transform.spectrogram.window", "mel_transform.mel_scale.fb")


def vocoder_config_from_release(config: Mapping[str, Any]):
    from songmill.model.adamos import ADaMoSConfig

    known = {k: v for k, v in config.items() if not k.startswith("_")}
    try:
        return ADaMoSConfig.from_dict(known)
    except ValueError as exc:
        raise ReleaseFormatError(f"{VOCODER_DIR}/config.json: {exc}") from None


def vocoder_derived_buffers(cfg) -> dict[str, torch.Tensor]:
    """The release vocoder's mel front-end buffers (window, filterbank), as its code builds them."""
    from songmill.model.mel import torch_slaney_filterbank

    return {
        "mel_transform.spectrogram.window": torch.hann_window(cfg.win_length),
        "mel_transform.mel_scale.fb": torch_slaney_filterbank(cfg.mel_config()).T.contiguous(),
    }


def vocoder_state_from_release(tensors: Mapping[str, torch.Tensor], cfg) -> dict[str, torch.Tensor]:
    from songmill.model.adamos import ADaMoSHiFiGAN

    state = {k: v for k, v in tensors.items() if k not in _VOCODER_DERIVED}
    check_keys(VOCODER_DIR, _meta_state(lambda: ADaMoSHiFiGAN(cfg)), state)
    return state


def load_vocoder(src: str | Path):
    """The release's ADaMoS vocoder as songmill's ADaMoSHiFiGAN (`src` = release root or part dir)."""
    from songmill.model.adamos import ADaMoSHiFiGAN

    config, tensors = read_part(part_dir(src, VOCODER_DIR))
    cfg = vocoder_config_from_release(config)
    vocoder = ADaMoSHiFiGAN(cfg)
    vocoder.load_state_dict(vocoder_state_from_release(tensors, cfg), strict=True)
    return vocoder.eval()


# -- import / export --------------------------------------------------------------------------

DIT_NAME, DCAE_NAME, VOCODER_NAME = "dit", "dcae", "vocoder"
EXTRAS_FILE = "acestep_extras.safetensors"  # the release's unused cross-attention tensors
RELEASE_CONFIG_FILE = "acestep_config.json"  # the part's config.json as the release had it
TRAINER_FILE = "trainer.json"


def _write_songmill(
    directory: Path, name: str, config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]
) -> None:
    """`<name>.safetensors` + `<name>.json`, the pair model.weights.load_module reads."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.detach().contiguous().cpu() for k, v in sorted(tensors.items())},
        str(directory / f"{name}.safetensors"),
        metadata={"format": "pt", "name": name},
    )
    (directory / f"{name}.json").write_text(
        json.dumps(dict(config), indent=2, sort_keys=True) + "\n"
    )


def _relative_files(directory: Path) -> set[str]:
    return (
        {str(p.relative_to(directory)) for p in directory.rglob("*") if not p.is_dir()}
        if directory.is_dir()
        else set()
    )


def _check_replaceable(final: Path, would_write: set[str]) -> None:
    """`final` may be replaced only when it holds nothing but what this write puts there again
    (an earlier import or export of the same parts): anything else in it is someone else's."""
    if not final.exists():
        return
    if not final.is_dir():
        raise ReleaseFormatError(f"{final} exists and is not a directory; give another --out")
    foreign = sorted(_relative_files(final) - would_write)
    if foreign:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise ReleaseFormatError(
            f"{final} holds files songmill would not write there ({', '.join(foreign[:3])}{more}); "
            "nothing was replaced: move them away or give another --out"
        )


def _replace_dir(staging: Path, final: Path) -> None:
    """Swap a fully written staging directory in for `final` (a re-run replaces, never adds)."""
    import shutil

    if final.exists():
        old = final.with_name(f".{final.name}.old")
        if old.exists():
            shutil.rmtree(old)
        final.rename(old)
        staging.rename(final)
        shutil.rmtree(old)
    else:
        staging.rename(final)


def release_parts(src: str | Path) -> list[str]:
    src = Path(src)
    if not src.is_dir():
        raise WeightsMissing(
            f"{src} is not a directory: point at the unpacked ACE-Step v1 download"
        )
    found = [part for part in RELEASE_PARTS if (src / part).is_dir()]
    if not found:
        raise ReleaseFormatError(
            f"{src}: none of {', '.join(RELEASE_PARTS)} inside; is this the ACE-Step v1 checkpoint directory?"
        )
    return found


def import_release(src: str | Path, out: str | Path) -> dict[str, str]:
    """Convert an ACE-Step v1 release directory (any subset of its parts) into songmill
    checkpoints under `out`: dit/ (a checkpoint `generate`, `train dit --init-from` and LoRA
    training take), dcae/ (the features stage's DCAE), vocoder/, text_encoder/.
    Every part is read and checked before anything is written. Returns part -> written dir."""
    import shutil
    import tempfile

    from songmill.model.adamos import ADaMoSConfig

    src, out = Path(src), Path(out)
    parts = release_parts(src)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".import-", dir=out))
    written: dict[str, str] = {}
    try:
        plans = {}
        release_configs = {}
        if TRANSFORMER_DIR in parts:
            config, tensors = read_part(src / TRANSFORMER_DIR)
            cfg = dit_config_from_release(config, tensors)
            plans[DIT_NAME] = (cfg, *split_release_dit(tensors, cfg))
            release_configs[DIT_NAME] = config
        if DCAE_DIR in parts:
            config, tensors = read_part(src / DCAE_DIR)
            cfg = dcae_config_from_release(config, tensors)
            plans[DCAE_NAME] = (cfg, dcae_state_from_release(tensors, cfg))
            release_configs[DCAE_NAME] = config
        if VOCODER_DIR in parts:
            config, tensors = read_part(src / VOCODER_DIR)
            cfg = vocoder_config_from_release(config)
            plans[VOCODER_NAME] = (cfg, vocoder_state_from_release(tensors, cfg))
            release_configs[VOCODER_NAME] = config
        if TEXT_ENCODER_DIR in parts:
            text_dir = src / TEXT_ENCODER_DIR
            refuse_pickles(text_dir)
            if not any(p.suffix == ".safetensors" for p in text_dir.iterdir()):
                raise WeightsMissing(
                    f"{text_dir}: no safetensors weights for the umT5 text encoder"
                )

        if DCAE_NAME in plans:
            cfg, state = plans[DCAE_NAME]
            _write_songmill(staging / DCAE_NAME, DCAE_NAME, cfg.to_dict(), state)
        if VOCODER_NAME in plans:
            cfg, state = plans[VOCODER_NAME]
            _write_songmill(staging / VOCODER_NAME, VOCODER_NAME, cfg.to_dict(), state)
        if TEXT_ENCODER_DIR in parts:
            shutil.copytree(
                src / TEXT_ENCODER_DIR,
                staging / "text_encoder",
                ignore=shutil.ignore_patterns(*(f"*{s}" for s in PICKLE_SUFFIXES)),
            )
        if DIT_NAME in plans:
            cfg, state, unused = plans[DIT_NAME]
            directory = staging / DIT_NAME
            _write_songmill(directory, DIT_NAME, cfg.to_dict(), state)
            from safetensors.torch import save_file

            save_file(
                {k: v.contiguous() for k, v in sorted(unused.items())}, str(directory / EXTRAS_FILE)
            )
            # the release's mel settings are its vocoder's (music_dcae_pipeline uses vocoder.mel_transform)
            vocoder_cfg = plans[VOCODER_NAME][0] if VOCODER_NAME in plans else ADaMoSConfig()
            conditioning = {
                "text_encoder": str((out / "text_encoder").resolve())
                if TEXT_ENCODER_DIR in parts
                else "none",
                "dcae_checkpoint": str((out / DCAE_NAME).resolve()) if DCAE_NAME in plans else "",
                "vocoder": str((out / VOCODER_NAME).resolve()) if VOCODER_NAME in plans else "",
                "lyric_tokenizer_json": None,
                "mel": vocoder_cfg.mel_config().to_dict(),
            }
            trainer = {
                "step": 0,
                "kind": "dit",
                "lora": False,
                "preset": "acestep-v1",
                "imported_from": str(src.resolve()),
                "conditioning": conditioning,
            }
            (directory / TRAINER_FILE).write_text(
                json.dumps(trainer, indent=2, sort_keys=True) + "\n"
            )
        for name, config in release_configs.items():
            (staging / name / RELEASE_CONFIG_FILE).write_text(
                json.dumps(config, indent=2, sort_keys=True) + "\n"
            )
        for child in sorted(staging.iterdir()):  # every target checked before any is replaced
            _check_replaceable(out / child.name, _relative_files(child))
        for child in sorted(staging.iterdir()):
            _replace_dir(child, out / child.name)
            written[child.name] = str(out / child.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return written


def _stored_release_config(
    directory: Path, current: dict[str, Any], derive
) -> dict[str, Any] | None:
    """The release config.json an import kept, when it still describes the model (so a round
    trip gives the release's file back, unused fields included); None otherwise."""
    stored_file = directory / RELEASE_CONFIG_FILE
    if not stored_file.exists():
        return None
    stored = json.loads(stored_file.read_text())
    try:
        derived = derive(stored)
    except (ReleaseFormatError, WeightsMismatch, KeyError, ValueError):
        return None
    comparable = {k: v for k, v in current.items() if k not in _DCAE_BUFFERS}
    return (
        stored
        if {k: v for k, v in derived.items() if k not in _DCAE_BUFFERS} == comparable
        else None
    )


def _lora_release_tensors(directory: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A songmill LoRA checkpoint's adapters (peft names, as diffusers saves them) and its spec."""
    from safetensors.torch import load_file

    spec = json.loads((directory / "dit_lora.json").read_text())
    tensors = load_file(str(directory / "dit_lora.safetensors"))
    bad = [k for k in tensors if not re.search(r"\.lora_[AB]\.weight$", k)]
    if bad:
        raise ReleaseFormatError(f"{directory}: adapter tensors not in peft's naming: {bad[:3]}")
    return tensors, spec


def export_release(
    checkpoint: str | Path,
    out: str | Path,
    dcae: str | Path | None = None,
    vocoder: str | Path | None = None,
) -> dict[str, Any]:
    """Write a songmill DiT checkpoint (and the DCAE / vocoder / text encoder its conditioning
    names, or the ones given) in ACE-Step v1's release layout under `out`; a LoRA checkpoint
    gives its base as ace_step_transformer/ and the adapters as lora/pytorch_lora_weights.safetensors
    (diffusers / peft naming, which ACE-Step's pipeline loads with load_lora_adapter).
    Returns {"written": {part: dir}, "notes": [...]}."""
    import shutil

    from safetensors.torch import load_file, save_file
    from songmill.model.config import DCAEConfig
    from songmill.model.dit import LinearDiT
    from songmill.model.weights import load_module, resolve_checkpoint

    path = Path(resolve_checkpoint(str(checkpoint)))
    trainer = json.loads((path / TRAINER_FILE).read_text())
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    written: dict[str, str] = {}
    lora = None
    dit_dir = path
    if trainer.get("lora"):
        lora = _lora_release_tensors(path)
        dit_dir = Path(resolve_checkpoint(lora[1]["base_checkpoint"]))
        trainer = {
            **json.loads((dit_dir / TRAINER_FILE).read_text()),
            **{"conditioning": trainer.get("conditioning", {})},
        }
    name = "dit_ema" if (dit_dir / "dit_ema.safetensors").exists() else DIT_NAME
    dit = load_module(LinearDiT, dit_dir, name)
    blocking, sizes = acestep_incompatibilities(dit.cfg)
    if blocking:
        raise ReleaseFormatError(
            f"{dit_dir}: this DiT cannot run in ACE-Step's transformer: {'; '.join(blocking)}"
        )
    notes += [f"build the reference with {s}" for s in sizes]
    extras_file = dit_dir / EXTRAS_FILE
    extras = load_file(str(extras_file)) if extras_file.exists() else None
    if extras is None:
        notes.append("cross-attention add_* projections (unused by ACE-Step) written as zeros")
    tensors = export_dit_tensors(dit, extras)
    release_config = _stored_release_config(
        dit_dir, dit.cfg.to_dict(), lambda c: dit_config_from_release(c, tensors).to_dict()
    ) or dit_config_to_release(dit.cfg)
    write_part(out / TRANSFORMER_DIR, release_config, tensors)
    written["transformer"] = str(out / TRANSFORMER_DIR)
    if lora is not None:
        tensors, spec = lora
        lora_dir = out / "lora"
        lora_dir.mkdir(parents=True, exist_ok=True)
        peft_config = {
            "r": spec["rank"],
            "lora_alpha": spec["alpha"],
            "target_modules": list(spec["targets"]),
            "lora_dropout": spec.get("dropout", 0.0),
            "use_rslora": False,
            "bias": "none",
        }
        save_file(
            {k: v.contiguous() for k, v in sorted(tensors.items())},
            str(lora_dir / LORA_FILE),
            metadata={
                "format": "pt",
                "lora_adapter_metadata": json.dumps(peft_config, sort_keys=True),
            },
        )
        (lora_dir / "lora_config.json").write_text(json.dumps(peft_config, indent=2) + "\n")
        written["lora"] = str(lora_dir)

    conditioning = trainer.get("conditioning", {})
    dcae_dir = (
        Path(dcae)
        if dcae
        else (
            Path(conditioning["dcae_checkpoint"]) if conditioning.get("dcae_checkpoint") else None
        )
    )
    if dcae_dir is not None:
        dcae_dir = (
            dcae_dir
            if (dcae_dir / "dcae.safetensors").exists()
            else Path(resolve_checkpoint(str(dcae_dir)))
        )
        dcae_name = "dcae_ema" if (dcae_dir / "dcae_ema.safetensors").exists() else DCAE_NAME
        cfg = DCAEConfig.from_dict(json.loads((dcae_dir / f"{dcae_name}.json").read_text()))
        state = load_file(str(dcae_dir / f"{dcae_name}.safetensors"))
        shift, scale = float(state.pop("latent_shift")), float(state.pop("latent_scale"))
        if (round(shift, 4), round(scale, 4)) != (ACESTEP_LATENT_SHIFT, ACESTEP_LATENT_SCALE):
            notes.append(
                f"DCAE latent shift/scale {shift:.4g}/{scale:.4g} differ from ACE-Step's fixed "
                f"{ACESTEP_LATENT_SHIFT}/{ACESTEP_LATENT_SCALE}: its pipeline will mis-scale latents"
            )
        release_config = _stored_release_config(
            dcae_dir, cfg.to_dict(), lambda c: dcae_config_from_release(c, state).to_dict()
        ) or dcae_config_to_release(cfg)
        write_part(out / DCAE_DIR, release_config, state)
        written["dcae"] = str(out / DCAE_DIR)
    vocoder_dir = (
        Path(vocoder)
        if vocoder
        else (Path(conditioning["vocoder"]) if conditioning.get("vocoder") else None)
    )
    if vocoder_dir is not None:
        from songmill.model.adamos import ADaMoSConfig

        config = json.loads((vocoder_dir / f"{VOCODER_NAME}.json").read_text())
        if "dims" not in config:
            notes.append(
                f"{vocoder_dir} is a HiFi-GAN V1, not ACE-Step's ADaMoS vocoder: not exported"
            )
        else:
            cfg = ADaMoSConfig.from_dict(config)
            state = {
                **load_file(str(vocoder_dir / f"{VOCODER_NAME}.safetensors")),
                **vocoder_derived_buffers(cfg),
            }
            release_config = _stored_release_config(
                vocoder_dir, cfg.to_dict(), lambda c: vocoder_config_from_release(c).to_dict()
            ) or {"_class_name": "ADaMoSHiFiGANV1", **cfg.to_dict()}
            write_part(out / VOCODER_DIR, release_config, state)
            written["vocoder"] = str(out / VOCODER_DIR)
    text = conditioning.get("text_encoder", "none")
    if text not in ("none", "tiny-random", "") and Path(text).is_dir():
        target = out / TEXT_ENCODER_DIR
        copied = {f for f in _relative_files(Path(text)) if not f.endswith(tuple(PICKLE_SUFFIXES))}
        _check_replaceable(target, copied)
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(
            text, target, ignore=shutil.ignore_patterns(*(f"*{s}" for s in PICKLE_SUFFIXES))
        )
        written["text_encoder"] = str(target)
    return {"written": written, "notes": notes}
