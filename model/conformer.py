"""ACE-Step v1's lyric encoder: ESPnet's Conformer encoder as ACE-Step configures it.

Transformer-XL relative-position self-attention (pos_bias_u / pos_bias_v and a rel-shift),
Swish feed-forward, pre-LayerNorm, no convolution module and no macaron feed-forward; the input
goes through Linear + LayerNorm and is scaled by sqrt(width). Module names follow the release
(`embed.out.0`, `encoders.N.self_attn.linear_q`, ...), so its weights load key for key.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from songmill.model.config import LyricEncoderConfig
from torch import nn


def relative_position_encoding(
    length: int, dim: int, device: torch.device | None = None
) -> torch.Tensor:
    """(1, 2L - 1, dim) sinusoids for relative positions L-1 .. -(L-1) (ESPnet's RelPositionalEncoding)."""
    div_term = torch.exp(
        torch.arange(0, dim, 2, dtype=torch.float32, device=device) * -(math.log(10000.0) / dim)
    )
    positive = torch.arange(0, length, dtype=torch.float32, device=device)[:, None] * div_term
    negative = -1 * torch.arange(1, length, dtype=torch.float32, device=device)[:, None] * div_term
    angles = torch.cat([positive.flip(0), negative], dim=0)
    pe = torch.zeros(2 * length - 1, dim, device=device)
    pe[:, 0::2] = torch.sin(angles)
    pe[:, 1::2] = torch.cos(angles)
    return pe[None]


def rel_shift(x: torch.Tensor) -> torch.Tensor:
    """(B, H, T, 2T - 1) scores against relative positions -> (B, H, T, T) against key positions."""
    batch, heads, queries, positions = x.shape
    padded = torch.cat([x.new_zeros(batch, heads, queries, 1), x], dim=-1)
    padded = padded.view(batch, heads, positions + 1, queries)
    return padded[:, :, 1:].view_as(x)[:, :, :, : positions // 2 + 1]


class RelPositionMultiHeadedAttention(nn.Module):
    def __init__(self, heads: int, width: int, dropout: float) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"lyric encoder width {width} must be divisible by heads {heads}")
        self.h, self.d_k = heads, width // heads
        self.linear_q = nn.Linear(width, width)
        self.linear_k = nn.Linear(width, width)
        self.linear_v = nn.Linear(width, width)
        self.linear_out = nn.Linear(width, width)
        self.linear_pos = nn.Linear(width, width, bias=False)
        self.pos_bias_u = nn.Parameter(torch.empty(heads, self.d_k))
        self.pos_bias_v = nn.Parameter(torch.empty(heads, self.d_k))
        nn.init.xavier_uniform_(self.pos_bias_u)
        nn.init.xavier_uniform_(self.pos_bias_v)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, pos_emb: torch.Tensor) -> torch.Tensor:
        """x (B, T, W); mask (B, T) True = real key; pos_emb (1, 2T - 1, W)."""
        batch = x.shape[0]
        q = self.linear_q(x).view(batch, -1, self.h, self.d_k)  # (B, T, H, d)
        k = self.linear_k(x).view(batch, -1, self.h, self.d_k).transpose(1, 2)
        v = self.linear_v(x).view(batch, -1, self.h, self.d_k).transpose(1, 2)
        p = self.linear_pos(pos_emb).view(pos_emb.shape[0], -1, self.h, self.d_k).transpose(1, 2)
        content = torch.matmul((q + self.pos_bias_u).transpose(1, 2), k.transpose(-2, -1))
        position = rel_shift(
            torch.matmul((q + self.pos_bias_v).transpose(1, 2), p.transpose(-2, -1))
        )
        scores = (content + position) / math.sqrt(self.d_k)
        padded = ~mask[:, None, None, :]
        # a row with every key padded gives NaN in softmax; ESPnet zeroes it afterwards
        attn = torch.softmax(scores.masked_fill(padded, float("-inf")), dim=-1).masked_fill(
            padded, 0.0
        )
        out = torch.matmul(self.dropout(attn), v)
        return self.linear_out(out.transpose(1, 2).reshape(batch, -1, self.h * self.d_k))


class PositionwiseFeedForward(nn.Module):
    def __init__(self, width: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.w_1 = nn.Linear(width, hidden)
        self.w_2 = nn.Linear(hidden, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(self.dropout(F.silu(self.w_1(x))))


class ConformerEncoderLayer(nn.Module):
    def __init__(self, cfg: LyricEncoderConfig) -> None:
        super().__init__()
        self.self_attn = RelPositionMultiHeadedAttention(
            cfg.heads, cfg.width, cfg.attention_dropout
        )
        self.feed_forward = PositionwiseFeedForward(
            cfg.width, int(cfg.width * cfg.ffn_ratio), cfg.dropout
        )
        self.norm_ff = nn.LayerNorm(cfg.width, eps=1e-5)
        self.norm_mha = nn.LayerNorm(cfg.width, eps=1e-5)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, pos_emb: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.self_attn(self.norm_mha(x), mask, pos_emb))
        return x + self.dropout(self.feed_forward(self.norm_ff(x)))


class _LinearEmbed(nn.Module):
    def __init__(self, cfg: LyricEncoderConfig) -> None:
        super().__init__()
        self.out = nn.Sequential(
            nn.Linear(cfg.token_dim, cfg.width),
            nn.LayerNorm(cfg.width, eps=1e-5),
            nn.Dropout(cfg.dropout),
        )


class EspnetConformerEncoder(nn.Module):
    """Embedded lyric tokens (B, L, token_dim) + mask (B, L) -> (B, L, width).

    Padded positions come out as whatever the layers make of them (as in ACE-Step); the DiT's
    cross-attention masks them.
    """

    config_class = LyricEncoderConfig

    def __init__(self, cfg: LyricEncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = _LinearEmbed(cfg)
        self.positional_dropout = nn.Dropout(cfg.positional_dropout)
        self.encoders = nn.ModuleList(ConformerEncoderLayer(cfg) for _ in range(cfg.depth))
        self.after_norm = nn.LayerNorm(cfg.width, eps=1e-5)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        x = self.embed.out(x) * math.sqrt(self.cfg.width)
        pos_emb = relative_position_encoding(x.shape[1], self.cfg.width, x.device).to(x.dtype)
        x, pos_emb = self.positional_dropout(x), self.positional_dropout(pos_emb)
        mask = mask.bool()
        for layer in self.encoders:
            x = layer(x, mask, pos_emb)
        return self.after_norm(x)
