"""The `structure` stage's model backend: a SongFormer-style frame network.

Input: frames of 0.5 s (64 log-mel bands + 12 chroma, each standardised over the track).
A linear projection, a few transformer encoder layers with learned positions, then two heads:
a boundary logit per frame (a section starts here) and section-label logits per frame (the seven
labels of data_schema.labels.SECTION_LABELS). Decoding: boundary probabilities are peak-picked
(>= 0.5, at least `min_section_s` apart) and each section takes the label most of its frames vote
for. Weights are `structure.safetensors` + `structure.json` in the folder named by
`structure.model_path`, read with songmill.model.weights (strict name and shape checks; pickle
files refused). There is no public checkpoint of this network: train one, or convert one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from songmill.annotate.base import StageUnavailable
from songmill.annotate.weights import REGISTRY, missing_message
from songmill.data_schema.labels import SECTION_LABELS
from torch import nn

FRAME_S = 0.5
N_MELS = 64
IN_DIM = N_MELS + 12
WEIGHTS_NAME = "structure"


class StructureNet(nn.Module):
    def __init__(self, config: dict[str, Any]):
        super().__init__()
        self.config = dict(config)
        width, layers, heads = int(config["width"]), int(config["layers"]), int(config["heads"])
        self.max_frames = int(config.get("max_frames", 4096))
        self.proj = nn.Linear(int(config.get("in_dim", IN_DIM)), width)
        self.pos = nn.Parameter(torch.zeros(1, self.max_frames, width))
        layer = nn.TransformerEncoderLayer(
            width, heads, dim_feedforward=4 * width, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.boundary = nn.Linear(width, 1)
        self.label = nn.Linear(width, len(SECTION_LABELS))

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, in_dim) -> boundary logits (B, T), label logits (B, T, labels)."""
        x = self.proj(frames) + self.pos[:, : frames.shape[1]]
        x = self.encoder(x)
        return self.boundary(x).squeeze(-1), self.label(x)

    @torch.no_grad()
    def sections(self, audio: np.ndarray, sr: int, min_section_s: float) -> list[dict]:
        frames = frame_features(audio, sr)[: self.max_frames]
        device = next(self.parameters()).device
        boundary, label = self(torch.from_numpy(frames).unsqueeze(0).to(device))
        prob = torch.sigmoid(boundary[0]).cpu().numpy()
        votes = label[0].argmax(-1).cpu().numpy()
        return decode(prob, votes, len(audio) / sr, min_section_s)


def frame_features(audio: np.ndarray, sr: int) -> np.ndarray:
    """(frames, IN_DIM) float32: log-mel and chroma averaged over 0.5 s, standardised."""
    import librosa

    hop = 512
    power = np.abs(librosa.stft(audio, n_fft=2048, hop_length=hop)) ** 2
    mel = librosa.power_to_db(librosa.feature.melspectrogram(S=power, sr=sr, n_mels=N_MELS) + 1e-10)
    chroma = librosa.feature.chroma_stft(S=power, sr=sr)
    both = np.vstack([mel, chroma])
    per = max(1, int(round(FRAME_S * sr / hop)))
    n = max(1, both.shape[1] // per)
    pooled = (
        both[:, : n * per].reshape(both.shape[0], n, per).mean(-1)
        if both.shape[1] >= per
        else both.mean(1, keepdims=True)
    )
    pooled = (pooled - pooled.mean(1, keepdims=True)) / (pooled.std(1, keepdims=True) + 1e-6)
    return pooled.T.astype(np.float32)


def decode(
    prob: np.ndarray, votes: np.ndarray, duration: float, min_section_s: float
) -> list[dict]:
    min_frames = max(1, int(round(min_section_s / FRAME_S)))
    chosen: list[int] = []
    for i in np.argsort(-prob):
        if prob[i] < 0.5:
            break
        if min_frames <= i <= len(prob) - min_frames and all(
            abs(int(i) - c) >= min_frames for c in chosen
        ):
            chosen.append(int(i))
    edges = [0, *sorted(chosen), len(prob)]
    sections = []
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        label = SECTION_LABELS[int(np.bincount(votes[a:b], minlength=len(SECTION_LABELS)).argmax())]
        sections.append(
            {
                "start": a * FRAME_S,
                "end": min(duration, b * FRAME_S) if b < len(prob) else duration,
                "label": label,
                "confidence": float(prob[a]) if a else 1.0,
            }
        )
    return sections


def save_structure_model(model: StructureNet, directory: str) -> None:
    from songmill.model.weights import save_module

    save_module(model, model.config, directory, WEIGHTS_NAME)


def load_structure_model(directory: str, device: str = "auto") -> StructureNet:
    from songmill.model.weights import WeightsMissing, load_module

    spec = REGISTRY["structure-model"]
    if not directory:
        raise StageUnavailable(missing_message(spec, [], "structure model"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        model = load_module(StructureNet, directory, WEIGHTS_NAME, device=device)
    except WeightsMissing:
        raise StageUnavailable(missing_message(spec, [directory], "structure model")) from None
    return model.eval().requires_grad_(False)
