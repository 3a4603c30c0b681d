"""Configuration dataclasses for every model part and the `tiny` / `small` / `base` presets.

`base` follows ACE-Step v1 (see SPEC.md "Model"); `small` fits one consumer GPU; `tiny` runs a
training step in well under a second on CPU and is what the tests and the demo use.
Every config round-trips through plain JSON-able dicts (`to_dict` / `from_dict`), which is what
`model.weights` writes next to the safetensors file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T", bound="_DictConfig")

# The audio the model hears and the latent frame rate it works at, defined once: mels at 44.1 kHz
# with hop 512, the DCAE 8x down in time (240 s = 2584 latent frames).
SAMPLE_RATE = 44100
HOP_LENGTH = 512
LATENT_DOWNSAMPLE = 8
LATENT_FPS = SAMPLE_RATE / HOP_LENGTH / LATENT_DOWNSAMPLE  # 10.77 latent frames per second


class _DictConfig:
    """Mixin: dict round trip that rebuilds nested config dataclasses and tuples."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, _DictConfig):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = [list(v) if isinstance(v, tuple) else v for v in value]
            elif isinstance(value, dict):
                value = dict(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        known = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = set(data) - set(known)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown config keys {sorted(unknown)}")
        kwargs: dict[str, Any] = {}
        for name, value in data.items():
            default = _default_of(known[name])
            if isinstance(default, _DictConfig) and isinstance(value, dict):
                value = type(default).from_dict(value)
            elif isinstance(default, tuple) and isinstance(value, list):
                value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
            kwargs[name] = value
        return cls(**kwargs)


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


@dataclass
class MelConfig(_DictConfig):
    sample_rate: int = SAMPLE_RATE
    channels: int = 2
    n_fft: int = 2048
    hop_length: int = HOP_LENGTH
    win_length: int = 2048
    n_mels: int = 128
    f_min: float = 40.0
    f_max: float = 16000.0
    # "acestep": the release's music_log_mel (center=False after (win - hop) / 2 reflect padding
    # each side, magnitude sqrt(re^2 + im^2 + 1e-6), torchaudio's Slaney filterbank);
    # "centered": songmill's earlier torch.stft(center=True) |X| with librosa's filterbank
    framing: str = "acestep"
    log_floor: float = 1e-5
    # log-magnitude range mapped linearly onto [-1, 1] (ACE-Step: -11 .. 3, no clamp)
    log_min: float = -11.0
    log_max: float = 3.0
    clamp: bool = False

    @property
    def frames_per_second(self) -> float:
        return self.sample_rate / self.hop_length


def scale_log_mel(log_mel: Any, cfg: MelConfig) -> Any:
    """Natural-log mel -> the DCAE's [-1, 1] image: ACE-Step's (x - min) / (max - min), then
    Normalize(0.5, 0.5); clamped only when cfg.clamp."""
    lo, hi = cfg.log_min, cfg.log_max
    scaled = ((log_mel - lo) / (hi - lo) - 0.5) / 0.5
    return scaled.clamp(-1.0, 1.0) if cfg.clamp else scaled


def unscale_mel(mel: Any, cfg: MelConfig) -> Any:
    """The inverse of scale_log_mel (fp32)."""
    lo, hi = cfg.log_min, cfg.log_max
    mel = mel.float().clamp(-1.0, 1.0) if cfg.clamp else mel.float()
    return (mel * 0.5 + 0.5) * (hi - lo) + lo


@dataclass
class DCAEConfig(_DictConfig):
    in_channels: int = 2
    latent_channels: int = 8
    widths: tuple[int, ...] = (128, 256, 512, 1024)
    encoder_depths: tuple[int, ...] = (2, 2, 3, 3)
    decoder_depths: tuple[int, ...] = (3, 3, 3, 3)
    # per stage: "res" (ResBlock) or "vit" (EfficientViT block: multiscale linear attention + GLU conv)
    block_types: tuple[str, ...] = ("res", "res", "res", "vit")  # ACE-Step v1's release
    attention_head_dim: int = 32
    qkv_multiscale_kernel: int = 5
    ffn_expand: int = 4
    # latent = (z - shift) * scale (buffers). ACE-Step's fixed constants (music_dcae_pipeline:
    # shift_factor -1.9091, scale_factor 0.1786); set_latent_stats can recalibrate them on data
    latent_shift: float = -1.9091
    latent_scale: float = 0.1786

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.widths) - 1)


@dataclass
class TextEncoderConfig(_DictConfig):
    # "umt5" / "mt5" / "t5": a local pretrained encoder at `path`; "tiny-random": built locally
    kind: str = "umt5"
    path: str = "google/umt5-base"
    d_model: int = 768
    max_length: int = 256
    # only used by kind == "tiny-random"
    vocab_size: int = 384
    num_layers: int = 2
    num_heads: int = 2
    d_kv: int = 16
    d_ff: int = 64
    seed: int = 0


@dataclass
class LyricEncoderConfig(_DictConfig):
    vocab_size: int = 6693  # XTTS VoiceBPE + language tags, as ACE-Step v1; the tokenizer decides
    # "espnet": ACE-Step v1's ESPnet Conformer (Transformer-XL relative-position attention, no conv
    # module, no macaron, input Linear + LayerNorm, x sqrt(width)); "macaron-rope": songmill's
    # earlier macaron Conformer with convolutions and rotary positions.
    kind: str = "espnet"
    # width of the token embedding (ACE-Step's lyric_hidden_size); 0 means `width`
    embed_dim: int = 0
    width: int = 1024
    depth: int = 6
    heads: int = 16
    ffn_ratio: float = 4.0
    conv_kernel: int = 15  # macaron-rope only
    max_tokens: int = 4096
    dropout: float = 0.1
    positional_dropout: float = 0.1  # espnet only
    attention_dropout: float = 0.0

    @property
    def token_dim(self) -> int:
        return self.embed_dim or self.width


@dataclass
class DiTConfig(_DictConfig):
    in_channels: int = 8
    latent_height: int = 16
    width: int = 2560
    depth: int = 24
    heads: int = 20
    head_dim: int = 128
    ffn_ratio: float = 2.5
    text_dim: int = 768
    speaker_dim: int = 512
    lyrics: LyricEncoderConfig = field(default_factory=LyricEncoderConfig)
    # "conv": ACE-Step's Conv2d(8 -> patch_hidden, 16x1) -> GroupNorm(32) -> 1x1 conv;
    # "linear": one Linear over the 8 x 16 patch (songmill's earlier choice)
    patch_embed: str = "conv"
    patch_hidden: int = 2048  # ACE-Step: in_channels * 256
    rope_theta: float = 1_000_000.0
    # "interleaved": ACE-Step's rotation of (2i, 2i+1) pairs against cat(freqs, freqs) tables;
    # "half": the usual rotate-half layout
    rope_layout: str = "interleaved"
    # ACE-Step rotates cross-attention too: latent positions for q, condition positions for k
    cross_attention_rope: bool = True
    # an extra affine RMSNorm before cross-attention (songmill's earlier choice; ACE-Step has none)
    cross_attention_norm: bool = False
    # True: padded frames never touch real ones (masked patch-embed statistics, FFN conv, output);
    # False: ACE-Step's masking (attention only), needed for bit-level parity with the release
    strict_padding: bool = False
    # output features ordered (row, channel) as ACE-Step's unpatchify, or (channel, row)
    output_order: str = "row_channel"
    timestep_freq_dim: int = 256
    # hidden state after this many blocks feeds the REPA projectors (ACE-Step: after block index 8)
    repa_block: int = 9
    repa_hidden: int = 0  # 0 means 2 x width, ACE-Step's projector size
    repa_targets: dict[str, int] = field(default_factory=lambda: {"mert": 1024, "mhubert": 768})
    linear_attention_eps: float = 1e-15
    gradient_checkpointing: bool = False

    @property
    def patch_dim(self) -> int:
        return self.in_channels * self.latent_height

    @property
    def repa_width(self) -> int:
        return self.repa_hidden or 2 * self.width


@dataclass
class ModelPreset(_DictConfig):
    name: str = "base"
    mel: MelConfig = field(default_factory=MelConfig)
    dcae: DCAEConfig = field(default_factory=DCAEConfig)
    dit: DiTConfig = field(default_factory=DiTConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    lyrics: LyricEncoderConfig = field(default_factory=LyricEncoderConfig)

    def __post_init__(self) -> None:
        # the DiT owns the lyric encoder: one config object for both views
        self.dit.lyrics = self.lyrics
        if self.dit.text_dim != self.text.d_model:
            raise ValueError(
                f"dit.text_dim {self.dit.text_dim} != text.d_model {self.text.d_model}"
            )


PRESET_NAMES = ("tiny", "small", "base")


def preset(name: str) -> ModelPreset:
    """The named preset: "tiny" | "small" | "base"."""
    if name == "base":
        return ModelPreset(name="base")
    if name == "small":
        lyrics = LyricEncoderConfig(width=512, depth=4, heads=8)
        return ModelPreset(
            name="small",
            dcae=DCAEConfig(
                widths=(64, 128, 256, 512),
                encoder_depths=(1, 1, 2, 2),
                decoder_depths=(2, 2, 2, 2),
            ),
            dit=DiTConfig(
                width=1024, depth=12, heads=16, head_dim=64, repa_block=4, patch_hidden=1024
            ),
            text=TextEncoderConfig(),
            lyrics=lyrics,
        )
    if name == "tiny":
        text = TextEncoderConfig(kind="tiny-random", path="", d_model=32, max_length=64)
        lyrics = LyricEncoderConfig(
            vocab_size=260,
            width=32,
            depth=1,
            heads=2,
            ffn_ratio=2.0,
            conv_kernel=3,
            max_tokens=256,
            dropout=0.0,
            positional_dropout=0.0,
        )
        return ModelPreset(
            name="tiny",
            dcae=DCAEConfig(
                widths=(8, 16, 16, 32),
                encoder_depths=(1, 1, 1, 1),
                decoder_depths=(1, 1, 1, 1),
                attention_head_dim=8,
                qkv_multiscale_kernel=3,
                ffn_expand=2,
            ),
            dit=DiTConfig(
                width=64,
                depth=2,
                heads=4,
                head_dim=16,
                text_dim=text.d_model,
                timestep_freq_dim=32,
                repa_block=1,
                repa_hidden=64,
                patch_hidden=64,
                repa_targets={"mert": 1024, "mhubert": 768},
            ),
            text=text,
            lyrics=lyrics,
        )
    raise ValueError(f"unknown preset {name!r}; choose one of {PRESET_NAMES}")
