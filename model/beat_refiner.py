"""A small bidirectional refiner of a causal beat tracker's activations.

BeatNet's CRNN is causal (an online tracker): each frame's beat probability sees only the past,
so on recorded songs its beats drift off the grid and slip half a beat. The refiner reads a whole
excerpt both ways: per frame, the BeatNet networks' (beat, downbeat) probabilities and the
positive spectral difference (the onset evidence the networks saw, in bands), through a two-layer
bidirectional GRU, to (beat, downbeat, no beat) probabilities in BeatNet's own layout, so the same
DBN decodes them. Fitted by benchmarks/devset/train_beat_refiner.py on the train half of the
real-production development set; weights ship in pretrained/.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from songmill.model.config import _DictConfig
from torch import nn

PRETRAINED = Path(__file__).resolve().parent / "pretrained"
NAME = "beat_refiner"


@dataclass
class BeatRefinerConfig(_DictConfig):
    # which BeatNet trainings' activations are read, in order (2 columns each)
    beatnet_models: tuple[int, ...] = (2, 3)
    # the positive spectral difference's bands averaged in groups of this many
    band_group: int = 8
    n_bands: int = 136
    hidden: int = 32
    layers: int = 2
    dropout: float = 0.0
    # where the weights came from (the training script writes it; not read by the model)
    provenance: dict = field(default_factory=dict)

    @property
    def n_inputs(self) -> int:
        return 2 * len(self.beatnet_models) + self.n_bands // self.band_group


class BeatRefiner(nn.Module):
    config_class = BeatRefinerConfig

    def __init__(self, config: BeatRefinerConfig) -> None:
        super().__init__()
        self.config = config
        # the training set's per-input mean and spread, kept with the weights
        self.register_buffer("mean", torch.zeros(config.n_inputs))
        self.register_buffer("std", torch.ones(config.n_inputs))
        self.proj = nn.Sequential(
            nn.Dropout(config.dropout), nn.Linear(config.n_inputs, config.hidden), nn.Tanh()
        )
        self.rnn = nn.GRU(
            config.hidden,
            config.hidden,
            num_layers=config.layers,
            batch_first=True,
            bidirectional=True,
            dropout=config.dropout if config.layers > 1 else 0.0,
        )
        self.out = nn.Linear(2 * config.hidden, 3)

    def inputs(self, activations: dict[int, np.ndarray], positive_diff: np.ndarray) -> np.ndarray:
        """(frames, n_inputs) float32: the configured networks' (beat, downbeat) columns, then the
        positive spectral difference (frames, n_bands) averaged over groups of bands."""
        c = self.config
        n = min(positive_diff.shape[0], *(activations[m].shape[0] for m in c.beatnet_models))
        groups = positive_diff[:n, : c.n_bands].astype(np.float32)
        groups = groups.reshape(n, c.n_bands // c.band_group, c.band_group).mean(axis=2)
        columns = [activations[m][:n, :2].astype(np.float32) for m in c.beatnet_models]
        return np.concatenate([*columns, groups], axis=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, frames, n_inputs) raw inputs -> (batch, frames, 3) logits."""
        hidden, _ = self.rnn(self.proj((x - self.mean) / self.std))
        return self.out(hidden)

    def probabilities(self, x: np.ndarray, window: int = 2000, overlap: int = 400) -> np.ndarray:
        """(frames, n_inputs) -> (frames, 2) beat and downbeat probabilities (BeatNet's layout:
        a beat that is not a downbeat, a downbeat).

        A long input is read in `window`-frame windows (40 s; it was fitted on 20 s) that overlap
        by `overlap` frames, as one batch: a recurrent pass over a whole song is one step per
        frame, a batch of windows a few times faster. Each frame comes from the window where it
        is furthest from an edge."""
        x = np.ascontiguousarray(x, np.float32)
        n = x.shape[0]
        window = min(window, n)
        # the last window ends at the input's end: padding would be read first backwards
        starts = sorted({*range(0, n - window, window - overlap), n - window})
        batch = np.stack([x[start : start + window] for start in starts])
        with torch.inference_mode():
            p = torch.softmax(self(torch.from_numpy(batch)), dim=-1)[..., :2].numpy()
        out = np.empty((n, 2), np.float32)
        # consecutive windows hand over in the middle of their overlap
        edges = [
            0,
            *((b + a + window) // 2 for a, b in zip(starts[:-1], starts[1:], strict=True)),
            n,
        ]
        for i, start in enumerate(starts):
            out[edges[i] : edges[i + 1]] = p[i, edges[i] - start : edges[i + 1] - start]
        return out


def load_pretrained(directory: str | Path = PRETRAINED, name: str = NAME) -> BeatRefiner:
    """The shipped refiner (eval mode); WeightsMissing when its files are absent."""
    from songmill.model.weights import load_module

    return load_module(BeatRefiner, directory, name).eval()
