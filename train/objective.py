"""The DiT's training objective pieces, ACE-Step v1's trainer.py being the reference:
classifier-free dropout of the conditions, the REPA alignment loss and how its terms combine.
(The denoising loss itself, x0-space or velocity, is model/flow.py's `denoising_loss`.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from songmill.model.conditions import Conditions


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of values (B, ..., F) over the frames where mask (B, F) is True."""
    weights = mask.to(values.dtype).reshape(
        mask.shape[0], *([1] * (values.dim() - 2)), mask.shape[1]
    )
    weights = weights.expand_as(values)
    return (values * weights).sum() / weights.sum().clamp_min(1.0)


def drop_conditions(
    cond: Conditions,
    p_text: float = 0.15,
    p_lyrics: float = 0.15,
    p_speaker: float = 0.5,
    generator: torch.Generator | None = None,
    drop_lyric_mask: bool = True,
) -> Conditions:
    """Classifier-free dropout, each condition independently per sample: text states and the
    speaker vector zeroed (their masks kept), lyric ids set to 0 and, with `drop_lyric_mask`
    (ACE-Step), the lyric mask set all False too, so a dropped lyric tells the network nothing,
    not even its length. One (3, B) uniform draw from `generator`: text, lyrics, speaker."""
    draws = torch.rand(3, cond.batch_size, generator=generator).to(cond.text.device)
    drop_text, drop_lyrics, drop_speaker = (
        draws[0] < p_text,
        draws[1] < p_lyrics,
        draws[2] < p_speaker,
    )
    lyrics_mask = cond.lyrics_mask
    if drop_lyric_mask:
        lyrics_mask = lyrics_mask & ~drop_lyrics[:, None].to(lyrics_mask.device)
    return Conditions(
        text=cond.text.masked_fill(drop_text[:, None, None], 0.0),
        text_mask=cond.text_mask,
        lyrics=cond.lyrics.masked_fill(drop_lyrics[:, None].to(cond.lyrics.device), 0),
        lyrics_mask=lyrics_mask,
        speaker=cond.speaker.masked_fill(drop_speaker[:, None].to(cond.speaker.device), 0.0),
    )


def repa_loss(
    projected: torch.Tensor,
    frame_mask: torch.Tensor,
    target: torch.Tensor,
    target_mask: torch.Tensor,
) -> torch.Tensor:
    """1 - cosine between the projector output, interpolated per sample from its latent frames to
    its target frames (10.77 Hz -> 75 / 50 Hz), and the SSL features; mean over frames, then
    over the samples that have both."""
    losses = []
    for b in range(projected.shape[0]):
        frames, targets = int(frame_mask[b].sum()), int(target_mask[b].sum())
        if frames == 0 or targets == 0:
            continue
        source = projected[b, :frames].float().T[None]  # (1, D, F)
        aligned = F.interpolate(source, size=targets, mode="linear", align_corners=False)[0].T
        cosine = F.cosine_similarity(aligned, target[b, :targets].float(), dim=-1)
        losses.append((1.0 - cosine).mean())
    if not losses:
        return projected.sum() * 0.0
    return torch.stack(losses).mean()


def combine_repa(terms: list[torch.Tensor], reduce: str = "mean") -> torch.Tensor | None:
    """The REPA loss from its per-target terms: their mean (ACE-Step: MERT and mHuBERT count half
    each) or their sum. None when there are no terms."""
    if not terms:
        return None
    total = torch.stack(terms).sum()
    if reduce == "mean":
        return total / len(terms)
    if reduce == "sum":
        return total
    raise ValueError(f"repa_reduce must be mean or sum, got {reduce!r}")
