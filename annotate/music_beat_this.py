"""Beat This (Foscarin, Schlüter & Widmer, ISMIR 2024) as the music stage's beat / downbeat backend.

The `beat-this` package supplies the network (`beat_this.model.beat_tracker.BeatThis`) and its
peak-picking (`Postprocessor`, "minimal": maxima above p = 0.5 within +-70 ms). Its front end and
loader are not used: `beat_this.preprocessing` imports torchaudio at module level, which has no
CPU build here, and its loader unpickles Lightning checkpoints. So:

- the log-mel front end is rebuilt here to the package's parameters (22050 Hz, 1024-sample
  frames, hop 441 = 50 frames/s, 128 Slaney mel bands 30 Hz - 11 kHz, magnitude STFT scaled by
  1/sqrt(frame length), log1p(1000 x)) with torch.stft and the triangular Slaney filters
  torchaudio's MelSpectrogram builds (checked against librosa's in tests/test_beat_this.py);
- weights load through songmill's own safetensors loader (model/weights.py): a directory with
  `<name>.safetensors` and `<name>.json` (the model's hyper-parameters). `convert_checkpoint`
  turns the authors' Lightning `.ckpt` (e.g. `final0.ckpt`) into that pair once, reading it with
  torch.load(weights_only=True), the restricted unpickler that builds tensors and plain
  containers only:

      python -m songmill.annotate.music_beat_this final0.ckpt ~/.cache/songmill/beat_this

- long tracks are cut into 1500-frame (30 s) chunks that overlap by 6 frames per side and
  stitched keeping the earlier chunk, as the package's own inference does.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Any

import numpy as np

SAMPLE_RATE = 22050
N_FFT = 1024
HOP = 441
FPS = 50
N_MELS = 128
F_MIN, F_MAX = 30.0, 11000.0
CHUNK_FRAMES = 1500
BORDER_FRAMES = 6
WEIGHTS_NAME = "beat_this"


def _model_class():
    from beat_this.model.beat_tracker import BeatThis

    return BeatThis


def model_from_config(config: dict[str, Any]):
    """A BeatThis built from hyper-parameters (keys the constructor does not take are ignored:
    Lightning checkpoints also hold the optimiser's)."""
    model_class = _model_class()
    accepted = set(inspect.signature(model_class).parameters)
    return model_class(**{k: v for k, v in config.items() if k in accepted})


def convert_checkpoint(
    checkpoint: str | Path, directory: str | Path, name: str = WEIGHTS_NAME
) -> Path:
    """Lightning checkpoint ({'hyper_parameters', 'state_dict' with 'model.' keys}) -> a
    safetensors + json pair that `load_model` reads; returns the tensor file."""
    import torch
    from songmill.model.weights import save_module

    blob = torch.load(str(checkpoint), map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or "state_dict" not in blob or "hyper_parameters" not in blob:
        raise ValueError(
            f"{checkpoint}: not a Beat This Lightning checkpoint (no state_dict / hyper_parameters)"
        )
    model = model_from_config(dict(blob["hyper_parameters"]))
    state = {
        key.removeprefix("model.").replace("_orig_mod.", ""): value
        for key, value in blob["state_dict"].items()
        if key.startswith("model.")
    }
    model.load_state_dict(state, strict=True)
    accepted = set(inspect.signature(_model_class()).parameters)
    config = {k: v for k, v in dict(blob["hyper_parameters"]).items() if k in accepted}
    return save_module(model, config, directory, name)


def load_model(directory: str | Path, name: str = WEIGHTS_NAME, device: str = "cpu"):
    """BeatThis in eval mode from `<directory>/<name>.safetensors` + `.json`; raises
    songmill.model.weights.WeightsMissing (the runner's retryable "unavailable") when absent."""
    from songmill.model.weights import load_module

    return load_module(model_from_config, directory, name, strict=True, device=device).eval()


_MEL_FILTERS: dict[str, Any] = {}


def _hz_to_slaney_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above."""
    hz = np.asarray(hz, np.float64)
    log_step = np.log(6.4) / 27.0
    return np.where(
        hz < 1000.0, hz / (200.0 / 3), 15.0 + np.log(np.maximum(hz, 1e-9) / 1000.0) / log_step
    )


def _slaney_mel_to_hz(mel: np.ndarray) -> np.ndarray:
    log_step = np.log(6.4) / 27.0
    return np.where(mel < 15.0, mel * (200.0 / 3), 1000.0 * np.exp(log_step * (mel - 15.0)))


def mel_filters(n_freqs: int = N_FFT // 2 + 1) -> np.ndarray:
    """(n_mels, n_freqs) triangular filters on the Slaney mel scale, unnormalised: what
    torchaudio's MelSpectrogram(mel_scale="slaney", norm=None) builds."""
    fft_hz = np.linspace(0.0, SAMPLE_RATE / 2, n_freqs)
    edges = _slaney_mel_to_hz(
        np.linspace(_hz_to_slaney_mel(F_MIN), _hz_to_slaney_mel(F_MAX), N_MELS + 2)
    )
    lower = (fft_hz[None, :] - edges[:-2, None]) / (edges[1:-1] - edges[:-2])[:, None]
    upper = (edges[2:, None] - fft_hz[None, :]) / (edges[2:] - edges[1:-1])[:, None]
    return np.maximum(0.0, np.minimum(lower, upper)).astype(np.float32)


def log_mel(mono_22k: np.ndarray):
    """(frames, 128) float32 tensor: the network's input for mono audio at 22050 Hz."""
    import torch

    if "bank" not in _MEL_FILTERS:
        _MEL_FILTERS["bank"] = torch.from_numpy(mel_filters())
        _MEL_FILTERS["window"] = torch.hann_window(N_FFT)
    signal = torch.from_numpy(np.ascontiguousarray(mono_22k, dtype=np.float32))
    stft = torch.stft(
        signal,
        N_FFT,
        HOP,
        window=_MEL_FILTERS["window"],
        center=True,
        pad_mode="reflect",
        normalized=True,
        return_complex=True,
    )
    mel = _MEL_FILTERS["bank"] @ stft.abs()
    return torch.log1p(1000.0 * mel).T.contiguous()


def frame_logits(model, spect, chunk_frames: int = CHUNK_FRAMES) -> tuple[Any, Any]:
    """Beat and downbeat logits per frame for a whole track (chunked, borders discarded)."""
    import torch

    n = spect.shape[0]
    if n <= chunk_frames:
        with torch.inference_mode():
            out = model(spect.unsqueeze(0))
        return out["beat"][0], out["downbeat"][0]
    step = chunk_frames - 2 * BORDER_FRAMES
    starts = list(range(-BORDER_FRAMES, n - BORDER_FRAMES, step))
    starts[-1] = n - (chunk_frames - BORDER_FRAMES)  # the last chunk ends at the track's end
    beat = torch.full((n,), -1000.0)
    downbeat = torch.full((n,), -1000.0)
    for start in reversed(starts):  # earlier chunks overwrite later ones ("keep first")
        lo, hi = max(start, 0), min(start + chunk_frames, n)
        chunk = torch.nn.functional.pad(spect[lo:hi], (0, 0, lo - start, start + chunk_frames - hi))
        with torch.inference_mode():
            out = model(chunk.unsqueeze(0))
        # the chunk's frames BORDER..CHUNK-BORDER are track frames start+BORDER.. (start >= -BORDER)
        first = start + BORDER_FRAMES
        last = min(start + chunk_frames - BORDER_FRAMES, n)
        beat[first:last] = out["beat"][0][BORDER_FRAMES : BORDER_FRAMES + last - first]
        downbeat[first:last] = out["downbeat"][0][BORDER_FRAMES : BORDER_FRAMES + last - first]
    return beat, downbeat


class BeatThisTracker:
    """Beats and downbeats (seconds) of mono audio at 22050 Hz."""

    def __init__(self, directory: str | Path, name: str = WEIGHTS_NAME, device: str = "cpu"):
        from beat_this.model.postprocessor import Postprocessor

        self.model = load_model(directory, name, device)
        self.postprocess = Postprocessor(type="minimal", fps=FPS)

    def __call__(self, mono_22k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        device = next(self.model.parameters()).device
        spect = log_mel(mono_22k).to(device)
        beat, downbeat = frame_logits(self.model, spect)
        with torch.inference_mode():
            beats, downbeats = self.postprocess(beat.float().cpu(), downbeat.float().cpu())
        return np.asarray(beats, np.float64), np.asarray(downbeats, np.float64)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(
            "usage: python -m songmill.annotate.music_beat_this CHECKPOINT.ckpt OUT_DIR"
        )
    print(convert_checkpoint(sys.argv[1], sys.argv[2]))
