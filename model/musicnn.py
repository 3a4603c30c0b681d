"""musicnn (Pons & Serra, 2019) in torch: the music tagger behind the caption stage's `tags` backend.

The network is the `*_musicnn` model of the `musicnn` package (ISC), rebuilt layer for layer so the
TF1 checkpoints it ships convert one to one (annotate/packaged_weights.py converts them to
safetensors without TensorFlow). Input: log-compressed mel patches, (batch, 187 frames, 96 mels)
at 16 kHz, hop 256, n_fft 512; output: 50 tag logits (sigmoid for probabilities).

- front end: a batch norm over the input, then "timbral" convolutions (7 frames x 38 / 67 mels)
  and "temporal" ones (128 / 64 / 32 frames x 1 mel), each ReLU -> batch norm -> max over mels;
- mid end: three 7-frame convolutions over the concatenated front-end channels, the last two with
  residual connections; front-end and mid-end maps are concatenated (dense connection);
- back end: max and mean over time (interleaved per channel, as TF's flatten of [max, mean]
  orders them), batch norm, a dense ReLU layer, batch norm, the output dense layer.
TF's batch norm epsilon is 1e-3; dropout is inactive at inference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from songmill.model.config import _DictConfig
from torch import nn

SAMPLE_RATE = 16000
N_FFT = 512
HOP = 256
N_MELS = 96
PATCH_FRAMES = 187  # 3 s: the length the checkpoints were trained on
BN_EPS = 1e-3

MTT_LABELS = (
    "guitar", "classical", "slow", "techno", "strings", "drums", "electronic", "rock", "fast", "piano",
    "ambient", "beat", "violin", "vocal", "synth", "female", "indian", "opera", "male", "singing",
    "vocals", "no vocals", "harpsichord", "loud", "quiet", "flute", "woman", "male vocal", "no vocal",
    "pop", "soft", "sitar", "solo", "man", "classic", "choir", "voice", "new age", "dance",
    "male voice", "female vocal", "beats", "harp", "cello", "no voice", "weird", "country", "metal",
    "female voice", "choral",
)  # fmt: skip
MSD_LABELS = (
    "rock", "pop", "alternative", "indie", "electronic", "female vocalists", "dance", "00s",
    "alternative rock", "jazz", "beautiful", "metal", "chillout", "male vocalists", "classic rock",
    "soul", "indie rock", "Mellow", "electronica", "80s", "folk", "90s", "chill", "instrumental",
    "punk", "oldies", "blues", "hard rock", "ambient", "acoustic", "experimental",
    "female vocalist", "guitar", "Hip-Hop", "70s", "party", "country", "easy listening", "sexy",
    "catchy", "funk", "electro", "heavy metal", "Progressive rock", "60s", "rnb", "indie pop", "sad",
    "House", "happy",
)  # fmt: skip


@dataclass
class MusicnnConfig(_DictConfig):
    labels: tuple[str, ...] = MTT_LABELS
    n_mels: int = N_MELS
    timbral_filters: int = 204  # int(1.6 * 128)
    temporal_filters: int = 51  # int(1.6 * 32)
    midend_filters: int = 64
    backend_units: int = 200


def _bn(channels: int) -> nn.BatchNorm1d:
    return nn.BatchNorm1d(channels, eps=BN_EPS)


class Musicnn(nn.Module):
    def __init__(self, config: MusicnnConfig | None = None):
        super().__init__()
        self.config = cfg = config or MusicnnConfig()
        m = cfg.n_mels
        self.input_bn = nn.BatchNorm2d(1, eps=BN_EPS)
        self.timbral_kernels = (int(0.4 * m), int(0.7 * m))
        self.timbral = nn.ModuleList(
            nn.Conv2d(1, cfg.timbral_filters, (7, k)) for k in self.timbral_kernels
        )
        self.timbral_bn = nn.ModuleList(
            nn.BatchNorm2d(cfg.timbral_filters, eps=BN_EPS) for _ in self.timbral_kernels
        )
        self.temporal_kernels = (128, 64, 32)
        self.temporal = nn.ModuleList(
            nn.Conv2d(1, cfg.temporal_filters, (k, 1)) for k in self.temporal_kernels
        )
        self.temporal_bn = nn.ModuleList(
            nn.BatchNorm2d(cfg.temporal_filters, eps=BN_EPS) for _ in self.temporal_kernels
        )
        front = 2 * cfg.timbral_filters + 3 * cfg.temporal_filters
        self.midend = nn.ModuleList(
            [nn.Conv1d(front, cfg.midend_filters, 7)]
            + [nn.Conv1d(cfg.midend_filters, cfg.midend_filters, 7) for _ in range(2)]
        )
        self.midend_bn = nn.ModuleList(_bn(cfg.midend_filters) for _ in range(3))
        pooled = 2 * (front + 3 * cfg.midend_filters)
        self.pool_bn = _bn(pooled)
        self.dense = nn.Linear(pooled, cfg.backend_units)
        self.dense_bn = _bn(cfg.backend_units)
        self.output = nn.Linear(cfg.backend_units, len(cfg.labels))

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """(batch, frames, mels) log-mel patches -> (batch, tags) logits."""
        x = self.input_bn(mel.unsqueeze(1))  # (B, 1, T, M)
        front = []
        padded = F.pad(x, (0, 0, 3, 3))  # 'same' in time for the 7-frame kernels
        for conv, bn in zip(self.timbral, self.timbral_bn, strict=True):
            front.append(bn(F.relu(conv(padded))).amax(dim=3))
        for k, conv, bn in zip(self.temporal_kernels, self.temporal, self.temporal_bn, strict=True):
            before = (k - 1) // 2  # TF 'same': the extra frame of an even kernel goes after
            front.append(bn(F.relu(conv(F.pad(x, (0, 0, before, k - 1 - before))))).amax(dim=3))
        features = [torch.cat(front, dim=1)]  # (B, C, T)
        h = features[0]
        for i, (conv, bn) in enumerate(zip(self.midend, self.midend_bn, strict=True)):
            out = bn(F.relu(conv(F.pad(h, (3, 3)))))
            h = out if i == 0 else out + h
            features.append(h)
        maps = torch.cat(features, dim=1)
        pooled = torch.stack([maps.amax(dim=2), maps.mean(dim=2)], dim=2).flatten(1)
        hidden = self.dense_bn(F.relu(self.dense(self.pool_bn(pooled))))
        return self.output(hidden)


def log_mel_patches(
    audio: np.ndarray, sample_rate: int = SAMPLE_RATE, patch_frames: int = PATCH_FRAMES
) -> np.ndarray:
    """musicnn's input: librosa's Slaney mel power spectrogram of 16 kHz mono audio, rounded to
    float16, log10(10000 x + 1) rounded to float16 (as the original extractor feeds it), cut into
    non-overlapping patches (a clip shorter than one patch is repeated to fill it).
    (patches, frames, mels). The extractor multiplies in float16, so loud bins (mel > 6.55)
    overflow to inf there and its tags turn NaN; the log is taken in float32 here."""
    import librosa

    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"musicnn expects {SAMPLE_RATE} Hz audio, got {sample_rate}")
    mel = librosa.feature.melspectrogram(y=np.asarray(audio, dtype=np.float32), sr=SAMPLE_RATE, hop_length=HOP,
                                         n_fft=N_FFT, n_mels=N_MELS).T  # fmt: skip
    mel = np.log10(10000 * mel.astype(np.float16).astype(np.float32) + 1).astype(np.float16)
    if mel.shape[0] < patch_frames:
        reps = int(np.ceil(patch_frames / max(1, mel.shape[0])))
        mel = (
            np.tile(mel, (reps, 1))[:patch_frames]
            if mel.shape[0]
            else np.zeros((patch_frames, N_MELS), np.float32)
        )
    starts = range(0, mel.shape[0] - patch_frames + 1, patch_frames)
    return np.stack([mel[s : s + patch_frames] for s in starts]).astype(np.float32)


# -- conversion from the TF1 checkpoint (names as tf.compat.v1.layers created them) ---------------
def _tf_bn(weights: dict[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
    return {"weight": weights[f"{name}/gamma"], "bias": weights[f"{name}/beta"],
            "running_mean": weights[f"{name}/moving_mean"], "running_var": weights[f"{name}/moving_variance"]}  # fmt: skip


def state_dict_from_tf(weights: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """The torch state dict of `Musicnn` from a musicnn TF1 checkpoint's variables. The layers
    were created in the order input bn, (conv, bn) x 5 front end, x 3 mid end, bn, dense, bn, dense."""
    out: dict[str, np.ndarray] = {}

    def put(prefix: str, tensors: dict[str, np.ndarray]) -> None:
        out.update({f"{prefix}.{k}": v for k, v in tensors.items()})

    put("input_bn", _tf_bn(weights, "batch_normalization"))
    front = [("timbral", 0), ("timbral", 1), ("temporal", 0), ("temporal", 1), ("temporal", 2)]
    for i, (kind, j) in enumerate(front):
        conv = "conv2d" if i == 0 else f"conv2d_{i}"
        out[f"{kind}.{j}.weight"] = weights[f"{conv}/kernel"].transpose(3, 2, 0, 1)  # HWIO -> OIHW
        out[f"{kind}.{j}.bias"] = weights[f"{conv}/bias"]
        put(f"{kind}_bn.{j}", _tf_bn(weights, f"batch_normalization_{i + 1}"))
    for j in range(3):
        kernel = weights[f"conv2d_{5 + j}/kernel"]  # (7, channels, 1, out): a 1-D conv over time
        out[f"midend.{j}.weight"] = kernel[:, :, 0, :].transpose(2, 1, 0)
        out[f"midend.{j}.bias"] = weights[f"conv2d_{5 + j}/bias"]
        put(f"midend_bn.{j}", _tf_bn(weights, f"batch_normalization_{6 + j}"))
    put("pool_bn", _tf_bn(weights, "batch_normalization_9"))
    out["dense.weight"], out["dense.bias"] = weights["dense/kernel"].T, weights["dense/bias"]
    put("dense_bn", _tf_bn(weights, "batch_normalization_10"))
    out["output.weight"], out["output.bias"] = weights["dense_1/kernel"].T, weights["dense_1/bias"]
    return {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in out.items()}
