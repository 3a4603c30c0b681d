"""Condition encoders: the frozen umT5 text encoder, the lyric Conformer, CFG dropout.

The text encoder is a transformers encoder (umT5 / mT5 / T5) loaded from a local directory or
the Hugging Face cache; `tiny_random()` builds a tiny randomly initialised UMT5 encoder with a
byte-level tokenizer (no files, no download) for tests and the tiny preset.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from songmill.model.conditions import Conditions
from songmill.model.config import LyricEncoderConfig, TextEncoderConfig
from songmill.model.layers import apply_rope, rope_angles
from torch import nn

# ---------------------------------------------------------------------------------------------
# text


class TextEncoder:
    """Frozen text encoder: `encoder(list_of_prompts) -> (states (B, L, D) fp32, mask (B, L) bool)`."""

    def __init__(self, model: nn.Module, tokenizer: Any, max_length: int = 256) -> None:
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_length = max_length

    @property
    def dim(self) -> int:
        return int(self.model.config.d_model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> TextEncoder:
        self.model.to(device=device, dtype=dtype)
        return self

    @classmethod
    def from_pretrained(
        cls, path: str | Path, max_length: int = 256, dtype: torch.dtype | None = None
    ) -> TextEncoder:
        """A local umT5 / mT5 / T5 encoder: a directory, or a repo id already in the HF cache."""
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(str(path), local_files_only=True)
            tokenizer = _load_tokenizer(path)
            model = _encoder_class(config.model_type).from_pretrained(
                str(path), local_files_only=True, use_safetensors=True, dtype=dtype
            )
        except OSError as exc:
            from songmill.model.weights import WeightsMissing

            raise WeightsMissing(
                f"text encoder weights not found at {path!s} (config.json / model.safetensors / "
                "tokenizer): run `huggingface-cli download google/umt5-base --local-dir <dir>` on "
                "a connected machine and pass that directory"
            ) from exc
        return cls(model, tokenizer, max_length)

    @classmethod
    def tiny_random(cls, cfg: TextEncoderConfig | None = None) -> TextEncoder:
        """A tiny random UMT5 encoder + byte tokenizer, deterministic for a given cfg.seed."""
        from transformers import ByT5Tokenizer, UMT5Config, UMT5EncoderModel

        cfg = cfg or TextEncoderConfig(kind="tiny-random", path="", d_model=32, max_length=64)
        config = UMT5Config(
            vocab_size=cfg.vocab_size,
            d_model=cfg.d_model,
            d_kv=cfg.d_kv,
            d_ff=cfg.d_ff,
            num_layers=cfg.num_layers,
            num_heads=cfg.num_heads,
            feed_forward_proj="gated-gelu",
            dropout_rate=0.0,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            model = UMT5EncoderModel(config)
        return cls(model, ByT5Tokenizer(), cfg.max_length)

    @classmethod
    def from_config(cls, cfg: TextEncoderConfig) -> TextEncoder:
        if cfg.kind == "tiny-random":
            return cls.tiny_random(cfg)
        return cls.from_pretrained(cfg.path, cfg.max_length)

    @torch.no_grad()
    def __call__(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.tokenizer(
            list(texts),
            padding="longest",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        ids = batch["input_ids"].to(self.device)
        mask = batch["attention_mask"].to(self.device)
        states = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        return states.float(), mask.bool()


def _load_tokenizer(path: str | Path) -> Any:
    """The tokenizer class a local directory names in tokenizer_config.json, else AutoTokenizer
    (from the HF cache, offline)."""
    import transformers

    directory = Path(path)
    config_file = directory / "tokenizer_config.json"
    if config_file.is_file():
        name = json.loads(config_file.read_text()).get("tokenizer_class")
        if name and hasattr(transformers, name):
            return getattr(transformers, name).from_pretrained(str(directory))
    return transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)


def _encoder_class(model_type: str) -> type:
    import transformers

    classes = {
        "umt5": transformers.UMT5EncoderModel,
        "mt5": transformers.MT5EncoderModel,
        "t5": transformers.T5EncoderModel,
    }
    if model_type not in classes:
        raise ValueError(
            f"unsupported text encoder type {model_type!r}; expected {sorted(classes)}"
        )
    return classes[model_type]


# ---------------------------------------------------------------------------------------------
# lyrics


class ByteLyricTokenizer:
    """Fallback lyric tokenizer: UTF-8 bytes shifted past 4 specials (0 pad, 1 bos, 2 eos, 3 unk).

    The real one is a BPE tokenizer (tokenizers.Tokenizer) trained on the corpus's lyrics; this
    one needs no file and fits any vocabulary of at least 260 ids.
    """

    pad_id, bos_id, eos_id = 0, 1, 2
    vocab_size = 260

    def encode_ids(self, text: str) -> list[int]:
        return [self.bos_id, *(b + 4 for b in text.encode("utf-8")), self.eos_id]


def tokenize_lyrics(tokenizer: Any, text: str, max_tokens: int) -> list[int]:
    """Ids from a tokenizers.Tokenizer (`.encode(text).ids`), a ByteLyricTokenizer or a callable."""
    if hasattr(tokenizer, "encode_ids"):
        ids = tokenizer.encode_ids(text)
    elif hasattr(tokenizer, "encode"):
        encoded = tokenizer.encode(text)
        ids = list(getattr(encoded, "ids", encoded))
    else:
        ids = list(tokenizer(text))
    return ids[:max_tokens] or [0]


class _FeedForward(nn.Module):
    def __init__(self, width: int, ratio: float, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.up = nn.Linear(width, int(width * ratio))
        self.down = nn.Linear(int(width * ratio), width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(self.dropout(F.silu(self.up(self.norm(x))))))


class _RelativeSelfAttention(nn.Module):
    """Multi-head self-attention with rotary positions: logits depend on relative offsets only."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.dropout = dropout

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = (
            self.qkv(self.norm(x)).view(batch, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        )
        q, k = apply_rope(q, *rope).to(v.dtype), apply_rope(k, *rope).to(v.dtype)
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask[:, None, None, :],
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.out(out.transpose(1, 2).reshape(batch, length, width))


class _ConvModule(nn.Module):
    """Conformer conv module: pointwise -> GLU -> depthwise (masked) -> LayerNorm -> SiLU -> pointwise.

    LayerNorm stands in for the original BatchNorm so padding never enters any statistic.
    """

    def __init__(self, width: int, kernel: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.pointwise_in = nn.Linear(width, 2 * width)
        self.depthwise = nn.Conv1d(width, width, kernel, padding=kernel // 2, groups=width)
        self.depth_norm = nn.LayerNorm(width)
        self.pointwise_out = nn.Linear(width, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = F.glu(self.pointwise_in(self.norm(x)), dim=-1)
        h = h.masked_fill(~mask[..., None], 0.0)
        h = self.depthwise(h.transpose(1, 2)).transpose(1, 2)
        return self.dropout(self.pointwise_out(F.silu(self.depth_norm(h))))


class ConformerBlock(nn.Module):
    def __init__(self, cfg: LyricEncoderConfig) -> None:
        super().__init__()
        self.ff1 = _FeedForward(cfg.width, cfg.ffn_ratio, cfg.dropout)
        self.attention = _RelativeSelfAttention(cfg.width, cfg.heads, cfg.dropout)
        self.conv = _ConvModule(cfg.width, cfg.conv_kernel, cfg.dropout)
        self.ff2 = _FeedForward(cfg.width, cfg.ffn_ratio, cfg.dropout)
        self.norm = nn.LayerNorm(cfg.width)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        x = x + 0.5 * self.ff1(x)  # macaron: half-step feed-forwards around attention and conv
        x = x + self.attention(x, mask, rope)
        x = x + self.conv(x, mask)
        x = x + 0.5 * self.ff2(x)
        return self.norm(x)


class MacaronLyricEncoder(nn.Module):
    """songmill's earlier lyric encoder: embedded tokens (B, L, width) -> (B, L, width) through a
    macaron Conformer with convolutions and rotary positions (zeros at padded positions)."""

    config_class = LyricEncoderConfig

    def __init__(self, cfg: LyricEncoderConfig) -> None:
        super().__init__()
        if cfg.width % cfg.heads:
            raise ValueError("lyric encoder width must be divisible by heads")
        if cfg.token_dim != cfg.width:
            raise ValueError("the macaron-rope lyric encoder needs embed_dim == width")
        self.cfg = cfg
        self.blocks = nn.ModuleList(ConformerBlock(cfg) for _ in range(cfg.depth))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        # a row with nothing to attend to would give NaN: let it attend to its first slot
        attend = mask.clone()
        attend[:, 0] |= ~attend.any(dim=1)
        rope = rope_angles(x.shape[1], self.cfg.width // self.cfg.heads, device=x.device)
        for block in self.blocks:
            x = block(x, attend, rope)
        return x.masked_fill(~mask[..., None], 0.0)


def build_lyric_encoder(cfg: LyricEncoderConfig) -> nn.Module:
    """The lyric encoder `cfg.kind` names: embedded tokens (B, L, token_dim) + mask -> (B, L, width)."""
    if cfg.kind == "espnet":
        from songmill.model.conformer import EspnetConformerEncoder

        return EspnetConformerEncoder(cfg)
    if cfg.kind == "macaron-rope":
        return MacaronLyricEncoder(cfg)
    raise ValueError(
        f"unknown lyric encoder kind {cfg.kind!r}; expected 'espnet' or 'macaron-rope'"
    )


# ---------------------------------------------------------------------------------------------
# classifier-free guidance dropout


def cfg_dropout(
    cond: Conditions,
    p_text: float = 0.15,
    p_lyrics: float = 0.15,
    p_speaker: float = 0.5,
    generator: torch.Generator | None = None,
) -> Conditions:
    """Drop each condition independently per sample (text / speaker zeroed, lyric ids -> 0)."""
    batch = cond.batch_size
    draws = torch.rand(3, batch, generator=generator).to(cond.text.device)
    drop_text, drop_lyrics, drop_speaker = (
        draws[0] < p_text,
        draws[1] < p_lyrics,
        draws[2] < p_speaker,
    )
    return Conditions(
        text=cond.text.masked_fill(drop_text[:, None, None], 0.0),
        text_mask=cond.text_mask,
        lyrics=cond.lyrics.masked_fill(drop_lyrics[:, None], 0),
        lyrics_mask=cond.lyrics_mask,
        speaker=cond.speaker.masked_fill(drop_speaker[:, None], 0.0),
    )
