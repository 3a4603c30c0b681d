"""Resemblyzer speaker embeddings for the features stage (`features.speaker = resemblyzer`).

The encoder is model/voice_encoder.py with the weights songmill converts from the `Resemblyzer`
wheel (annotate/packaged_weights.py). It hears the vocal stem (the features stage hands it the
separate stage's vocals, or the mix without one); instrumentals get no vector, which the trainer
reads as the zero vector, as in ACE-Step. Preprocessing is Resemblyzer's own: volume raised to
-30 dBFS (never lowered) and silences longer than ~0.2 s cut with WebRTC's VAD (`webrtcvad`, from
the `webrtcvad-wheels` package).

256 vs 512 dimensions: the DiT's speaker input is a learned projection (model/dit.py
`speaker_embedder`, Linear(speaker_dim, width)) whose input width a DiT trained from scratch takes
from the shards (train/tasks.py reads `speaker_dim` = 256 from the features metadata), so 256-d
vectors need no padding there. ACE-Step's released DiT expects 512 (its own speaker encoder): a
fine-tune of it on Resemblyzer vectors needs them zero-padded to 512 (`ResemblyzerEmbedder(...,
dim=512)`), and its projection must relearn what those inputs mean; with the trainer's 50 %
speaker dropout the model also learns to do without them.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from songmill.annotate.base import StageUnavailable
from songmill.annotate.weights import REGISTRY, locate, missing_message

SAMPLE_RATE = 16000
MIN_VOICED_S = 0.5  # less voice than this after the VAD: no speaker to embed


class ResemblyzerEmbedder:
    """Callable: 16 kHz mono audio -> a torch vector of `dim` floats (zeros when nothing is voiced)."""

    sample_rate = SAMPLE_RATE

    def __init__(self, folder: str | Path, device: str = "cpu", dim: int = 0, max_s: float = 120.0):
        import torch
        from safetensors.torch import load_file
        from songmill.model.voice_encoder import EMBEDDING_DIM, VoiceEncoder

        self.model = VoiceEncoder()
        self.model.load_state_dict(load_file(str(Path(folder) / "voice_encoder.safetensors")))
        self.model.eval().requires_grad_(False).to(device)
        if dim and dim < EMBEDDING_DIM:
            raise StageUnavailable(
                f"features.speaker_dim = {dim} is smaller than Resemblyzer's {EMBEDDING_DIM} dimensions"
            )
        self.dim = dim or EMBEDDING_DIM
        self.max_s = max_s
        self._torch = torch

    @classmethod
    def load(cls, setting: str, device: str = "cpu", dim: int = 0) -> ResemblyzerEmbedder:
        spec = REGISTRY["resemblyzer"]
        where = locate(spec, None if setting == "resemblyzer" else setting)
        if not where.present:
            raise StageUnavailable(
                missing_message(spec, where.looked, "features speaker (Resemblyzer)")
            )
        return cls(where.path, device, dim)

    @staticmethod
    def preprocess(mono: np.ndarray) -> np.ndarray:
        """Resemblyzer's preprocess_wav on 16 kHz audio: volume up to -30 dBFS, long silences cut."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter(
                    "ignore", DeprecationWarning
                )  # its scipy.ndimage.morphology import
                from resemblyzer.audio import normalize_volume, trim_long_silences
        except ImportError as exc:
            raise StageUnavailable(
                f"features speaker (Resemblyzer): {exc}; pip install --no-deps Resemblyzer webrtcvad-wheels"
            ) from None
        wav = np.clip(np.asarray(mono, np.float32), -1.0, 1.0)
        if not np.any(wav):
            return wav[:0]
        return trim_long_silences(normalize_volume(wav, -30, increase_only=True)).astype(np.float32)

    def embed(self, mono: np.ndarray) -> np.ndarray:
        from songmill.model.voice_encoder import embed_utterance

        wav = self.preprocess(mono)[: int(self.max_s * SAMPLE_RATE)]
        if wav.size < MIN_VOICED_S * SAMPLE_RATE:
            return np.zeros(self.dim, np.float32)
        vector = embed_utterance(self.model, wav)
        return np.pad(vector, (0, self.dim - vector.size))

    def __call__(self, mono: np.ndarray):
        return self._torch.from_numpy(self.embed(mono))
