"""The condition bundle handed to the DiT: raw text-encoder states, lyric token ids, speaker vector.

The DiT owns the lyric Conformer and the projections to its width, so callers pass what the
frozen text encoder produced, the lyric tokenizer's ids and a 512-d speaker embedding (zeros for
instrumentals).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Conditions:
    text: torch.Tensor  # (B, Lt, Dt) float: frozen text-encoder hidden states
    text_mask: torch.Tensor  # (B, Lt) bool: True = real token
    lyrics: torch.Tensor  # (B, Ll) long: lyric token ids (0 = pad / dropped)
    lyrics_mask: torch.Tensor  # (B, Ll) bool
    speaker: torch.Tensor  # (B, 512) float: zeros for instrumentals

    @property
    def batch_size(self) -> int:
        return int(self.text.shape[0])

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> Conditions:
        """Move every tensor; `dtype` applies to the float tensors only."""
        return Conditions(
            text=self.text.to(device=device, dtype=dtype),
            text_mask=self.text_mask.to(device=device),
            lyrics=self.lyrics.to(device=device),
            lyrics_mask=self.lyrics_mask.to(device=device),
            speaker=self.speaker.to(device=device, dtype=dtype),
        )

    def index(self, rows: torch.Tensor | slice) -> Conditions:
        return Conditions(
            self.text[rows],
            self.text_mask[rows],
            self.lyrics[rows],
            self.lyrics_mask[rows],
            self.speaker[rows],
        )


def null_conditions(cond: Conditions) -> Conditions:
    """The unconditional input used for classifier-free guidance: everything dropped.

    Same convention as `cfg_dropout`: text states and speaker zeroed, lyric ids set to 0 with the
    masks kept, so the sequence shapes do not change.
    """
    return Conditions(
        text=torch.zeros_like(cond.text),
        text_mask=cond.text_mask.clone(),
        lyrics=torch.zeros_like(cond.lyrics),
        lyrics_mask=cond.lyrics_mask.clone(),
        speaker=torch.zeros_like(cond.speaker),
    )


def _pad_to(x: torch.Tensor, length: int, value: float | bool | int = 0) -> torch.Tensor:
    missing = length - x.shape[1]
    if missing <= 0:
        return x
    pad = (0, 0) * (x.dim() - 2) + (0, missing)
    if x.dtype == torch.bool:
        return F.pad(x.to(torch.uint8), pad, value=int(value)).bool()
    return F.pad(x, pad, value=value)


def concat_conditions(parts: list[Conditions]) -> Conditions:
    """Stack condition batches along the batch axis, right-padding sequences (masks False)."""
    lt = max(c.text.shape[1] for c in parts)
    ll = max(c.lyrics.shape[1] for c in parts)
    return Conditions(
        text=torch.cat([_pad_to(c.text, lt) for c in parts]),
        text_mask=torch.cat([_pad_to(c.text_mask, lt, False) for c in parts]),
        lyrics=torch.cat([_pad_to(c.lyrics, ll) for c in parts]),
        lyrics_mask=torch.cat([_pad_to(c.lyrics_mask, ll, False) for c in parts]),
        speaker=torch.cat([c.speaker for c in parts]),
    )
