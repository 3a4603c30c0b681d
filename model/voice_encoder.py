"""Resemblyzer's voice encoder (GE2E speaker embeddings, 256-d) in songmill's weight format.

The network and the utterance embedding are those of the `Resemblyzer` package (Apache-2.0):
40-channel mel power spectrogram (16 kHz, 25 ms window, 10 ms hop; no log), a 3-layer LSTM of
256 units, a linear layer, ReLU and L2 normalisation on the last hidden state. An utterance is
cut into 1.6 s partials (1.3 per second, the last kept when it is 75 % covered), their embeddings
averaged and L2-normalised. annotate/packaged_weights.py converts the wheel's `pretrained.pt`
(tensors only) to safetensors; tests/test_speaker.py checks this port against Resemblyzer's own.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

SAMPLE_RATE = 16000
MEL_CHANNELS = 40
WINDOW = 400  # 25 ms
HOP = 160  # 10 ms
PARTIAL_FRAMES = 160  # 1.6 s
EMBEDDING_DIM = 256


class VoiceEncoder(nn.Module):
    def __init__(self, hidden: int = 256, layers: int = 3, embedding: int = EMBEDDING_DIM):
        super().__init__()
        self.lstm = nn.LSTM(MEL_CHANNELS, hidden, layers, batch_first=True)
        self.linear = nn.Linear(hidden, embedding)

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        """(batch, frames, 40) mel power frames -> (batch, 256) L2-normalised embeddings."""
        _, (hidden, _) = self.lstm(mels)
        raw = torch.relu(self.linear(hidden[-1]))
        return raw / torch.norm(raw, dim=1, keepdim=True).clamp_min(1e-12)


def mel_frames(wav: np.ndarray) -> np.ndarray:
    import librosa

    mel = librosa.feature.melspectrogram(y=np.asarray(wav, np.float32), sr=SAMPLE_RATE, n_fft=WINDOW, hop_length=HOP,
                                         n_mels=MEL_CHANNELS)  # fmt: skip
    return mel.astype(np.float32).T


def partial_slices(n_samples: int, rate: float = 1.3, min_coverage: float = 0.75) -> list[slice]:
    """Mel-frame slices of the 1.6 s partials covering `n_samples` samples (Resemblyzer's rule)."""
    n_frames = int(np.ceil((n_samples + 1) / HOP))
    step = int(np.round((SAMPLE_RATE / rate) / HOP))
    slices = [
        slice(i, i + PARTIAL_FRAMES)
        for i in range(0, max(1, n_frames - PARTIAL_FRAMES + step + 1), step)
    ]
    last = slices[-1]
    coverage = (n_samples - last.start * HOP) / (PARTIAL_FRAMES * HOP)
    if coverage < min_coverage and len(slices) > 1:
        slices = slices[:-1]
    return slices


def embed_utterance(model: VoiceEncoder, wav: np.ndarray, batch: int = 64) -> np.ndarray:
    """The 256-d embedding of 16 kHz mono float audio (already volume-normalised and trimmed)."""
    slices = partial_slices(len(wav))
    needed = slices[-1].stop * HOP
    if needed >= len(wav):
        wav = np.pad(wav, (0, needed - len(wav)))
    mel = mel_frames(wav)
    mels = np.stack([mel[s] for s in slices])
    device = next(model.parameters()).device
    with torch.inference_mode():
        partials = torch.cat(
            [
                model(torch.from_numpy(mels[i : i + batch]).to(device))
                for i in range(0, len(mels), batch)
            ]
        )
    raw = partials.mean(0).cpu().numpy()
    return (raw / max(float(np.linalg.norm(raw)), 1e-12)).astype(np.float32)
