"""Parameter counts per model part, built on the meta device (no memory, no weights needed)."""

from __future__ import annotations

from typing import Any

import torch
from songmill.model.config import TextEncoderConfig, preset
from torch import nn

# google/umt5-base encoder, the text encoder the `small` and `base` presets expect
UMT5_BASE = {
    "vocab_size": 256384,
    "d_model": 768,
    "d_kv": 64,
    "d_ff": 2048,
    "num_layers": 12,
    "num_heads": 12,
    "feed_forward_proj": "gated-gelu",
}


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _text_encoder_params(cfg: TextEncoderConfig) -> int:
    from transformers import UMT5Config, UMT5EncoderModel

    if cfg.kind == "tiny-random":
        config = UMT5Config(
            vocab_size=cfg.vocab_size,
            d_model=cfg.d_model,
            d_kv=cfg.d_kv,
            d_ff=cfg.d_ff,
            num_layers=cfg.num_layers,
            num_heads=cfg.num_heads,
            feed_forward_proj="gated-gelu",
        )
    else:
        config = UMT5Config(**UMT5_BASE)
    with torch.device("meta"):
        return _count(UMT5EncoderModel(config))


def param_counts(preset_name: str) -> dict[str, Any]:
    """{part: {sub-part: count, ..., "total": n}, ..., "total": n, "trainable": n}."""
    from songmill.model.adamos import ADaMoSConfig, ADaMoSHiFiGAN
    from songmill.model.dcae import MusicDCAE
    from songmill.model.dit import LinearDiT

    cfg = preset(preset_name)
    with torch.device("meta"):
        dcae = MusicDCAE(cfg.dcae)
        dit = LinearDiT(cfg.dit)
        vocoder = ADaMoSHiFiGAN(ADaMoSConfig(n_mels=cfg.mel.n_mels, input_channels=cfg.mel.n_mels))
    dit_total = _count(dit)
    lyric = _count(dit.lyric_embs) + _count(dit.lyric_encoder) + _count(dit.lyric_proj)
    repa = _count(dit.projectors)
    blocks = _count(dit.transformer_blocks)
    counts: dict[str, Any] = {
        "preset": preset_name,
        "dcae": {
            "encoder": _count(dcae.encoder),
            "decoder": _count(dcae.decoder),
            "total": _count(dcae),
        },
        "dit": {
            "blocks": blocks,
            "per_block": blocks // cfg.dit.depth,
            "lyric_encoder": lyric,
            "repa_projectors": repa,
            "embeddings_and_head": dit_total - blocks - lyric - repa,
            "total": dit_total,
        },
        "text_encoder": {"frozen": True, "total": _text_encoder_params(cfg.text)},
        # tiny decodes with Griffin-Lim (no weights); the others with ACE-Step's ADaMoS vocoder
        "vocoder": (
            {"kind": "griffin-lim", "total": 0}
            if preset_name == "tiny"
            else {"kind": "adamos-hifigan", "total": _count(vocoder)}
        ),
    }
    counts["total"] = sum(counts[p]["total"] for p in ("dcae", "dit", "text_encoder", "vocoder"))
    counts["generator_total"] = counts["dit"]["total"] + counts["text_encoder"]["total"]
    return counts
