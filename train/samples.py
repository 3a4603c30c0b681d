"""Validation samples written into the run directory: a wav, a mel image and the prompt text."""

from __future__ import annotations

import os

import numpy as np
import torch


def write_wav(path: str, wav: torch.Tensor, sample_rate: int) -> str:
    """(channels, samples) float in [-1, 1] -> 16-bit PCM wav."""
    import soundfile as sf

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    data = wav.detach().float().cpu().clamp(-1.0, 1.0).numpy().T
    sf.write(path, data, sample_rate, subtype="PCM_16")
    return path


def mel_image(mel: torch.Tensor) -> np.ndarray:
    """(C, n_mels, F) in [-1, 1] -> uint8 (C * n_mels, F) image, low frequencies at the bottom."""
    mel = mel.detach().float().cpu().clamp(-1.0, 1.0)
    rows = torch.cat([m.flip(0) for m in mel], dim=0)
    return ((rows + 1.0) * 127.5).round().to(torch.uint8).numpy()


def write_mel_png(path: str, mel: torch.Tensor, title: str = "") -> str | None:
    """A mel spectrogram picture: matplotlib when installed, else Pillow (a tensorboard
    dependency); None when neither is there."""
    image = mel_image(mel)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(10, 4))
        ax.imshow(image, aspect="auto", cmap="magma", origin="upper")
        ax.set_title(title[:120])
        ax.set_xlabel("frame")
        ax.set_ylabel("channel x mel band")
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        return path
    except ImportError:
        pass
    try:
        from PIL import Image
    except ImportError:
        return None
    Image.fromarray(image, mode="L").save(path)
    return path


def write_sample(
    sample_dir: str,
    step: int,
    wav: torch.Tensor | None,
    sample_rate: int,
    mel: torch.Tensor,
    text: str,
) -> dict[str, str]:
    os.makedirs(sample_dir, exist_ok=True)
    stem = os.path.join(sample_dir, f"step-{step:08d}")
    paths = {}
    if wav is not None:
        paths["wav"] = write_wav(stem + ".wav", wav, sample_rate)
    png = write_mel_png(stem + ".png", mel, text)
    if png:
        paths["png"] = png
    with open(stem + ".txt", "w") as f:
        f.write(text + "\n")
    paths["txt"] = stem + ".txt"
    return paths
