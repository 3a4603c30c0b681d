"""`aesthetics` stage: Meta's Audiobox Aesthetics scores per track, and a threshold filter.

The model is the `audiobox-aesthetics` package's own `AesMultiOutput` (a WavLM encoder with one
projection head per axis: CE content enjoyment, CU content usefulness, PC production complexity,
PQ production quality). Its `infer.py` needs torchaudio, which has no CPU build here, so this
module does what that file does with numpy: 16 kHz mono, 10 s windows (hop 10 s, the last window
zero-padded and masked), the heads' outputs mapped back through each axis' `target_transform`,
and the per-track score the window mean weighted by each window's share of real audio. The spread
over windows (weighted standard deviation) is stored beside the mean. Windows of every track of a
batch are stacked into one forward pass of `window_batch` windows.

Weights: a folder holding the Hugging Face release files (`config.json`, `model.safetensors`:
the `facebook/audiobox-aesthetics` repo), found through annotate/weights.py (the setting, then
`$SONGMILL_MODELS/audiobox-aesthetics`, then the HF cache). The pickle `checkpoint.pt` is never
loaded. A `config.json` may carry `wavlm_cfg` (overrides of the WavLM config) to build a smaller
encoder than the release's: tests save tiny random models that way.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from songmill.annotate.base import RUNTIME, Stage, StageConfig, StageUnavailable, Track
from songmill.annotate.weights import REGISTRY, locate, missing_message

SAMPLE_RATE = 16000
AXES = ("CE", "CU", "PC", "PQ")
# The dataclass fields of AesMultiOutput that a config.json may set.
MODEL_FIELDS = (
    "proj_num_layer", "proj_ln", "proj_act_fn", "proj_dropout", "nth_layer",
    "use_weighted_layer_sum", "normalize_embed", "output_dim", "target_transform",
)  # fmt: skip
WEIGHTS_FILE = "model.safetensors"


@dataclass
class AestheticsConfig(StageConfig):
    model: str = "facebook/audiobox-aesthetics"  # a folder with config.json + model.safetensors, or the hub id (cache only)
    window_s: float = 10.0
    hop_s: float = 10.0
    # Long tracks: at most this many windows, spread evenly over the track (0: every window).
    max_windows: int = 30
    # aesthetics_pass needs every score >= its threshold; 0 disables a threshold. PC is production
    # *complexity*, not quality, so it has none by default.
    min_ce: float = 5.0
    min_cu: float = 5.0
    min_pc: float = 0.0
    min_pq: float = 6.0
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU) | 32 | bf16 | 16
    window_batch: int = field(default=16, metadata=RUNTIME)
    batch_size: int = field(default=16, metadata=RUNTIME)


def _wavlm_override(overrides: dict[str, Any] | None):
    """A context in which AesMultiOutput builds its WavLM from the release config plus overrides."""
    import contextlib

    from audiobox_aesthetics.model import aes
    from audiobox_aesthetics.model.wavlm import WavLMConfig

    @contextlib.contextmanager
    def context():
        if not overrides:
            yield
            return
        saved = aes.DEFAULT_AUDIO_CFG
        aes.DEFAULT_AUDIO_CFG = WavLMConfig({**vars(saved), **overrides})
        try:
            yield
        finally:
            aes.DEFAULT_AUDIO_CFG = saved

    return context()


def build_model(config: dict[str, Any], precision: str = "32"):
    """An AesMultiOutput from a release-style config dict (random weights)."""
    try:
        from audiobox_aesthetics.model.aes import AesMultiOutput
    except ImportError:
        raise StageUnavailable(
            "the audiobox-aesthetics package is not installed: pip install --no-deps audiobox-aesthetics"
        ) from None
    kwargs = {k: config[k] for k in MODEL_FIELDS if k in config}
    with _wavlm_override(config.get("wavlm_cfg")):
        return AesMultiOutput(**kwargs, precision=precision)


def save_model(model, directory: str, wavlm_cfg: dict[str, Any] | None = None) -> None:
    """Write `model` in the release layout (config.json + model.safetensors)."""
    from safetensors.torch import save_file

    os.makedirs(directory, exist_ok=True)
    config = {k: getattr(model, k) for k in MODEL_FIELDS}
    if wavlm_cfg:
        config["wavlm_cfg"] = wavlm_cfg
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = os.path.join(directory, WEIGHTS_FILE + ".tmp")
    save_file(state, tmp, metadata={"format": "pt"})
    os.replace(tmp, os.path.join(directory, WEIGHTS_FILE))
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f, indent=2)


def load_model(directory: str, precision: str = "32", device: str = "cpu"):
    """The model of a release-layout folder, weights checked name by name and shape by shape."""
    from songmill.model.weights import load_state_into

    with open(os.path.join(directory, "config.json")) as f:
        config = json.load(f)
    if not isinstance(config.get("target_transform"), dict) or set(AXES) - set(
        config["target_transform"]
    ):
        raise StageUnavailable(
            f"{directory}/config.json has no target_transform for {', '.join(AXES)}"
        )
    model = build_model(config, precision)
    load_state_into(model, os.path.join(directory, WEIGHTS_FILE), strict=True)
    return model.eval().requires_grad_(False).to(device)


def windows(
    audio: np.ndarray, window: int, hop: int, max_windows: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n, window) zero-padded windows, their (n, window) validity masks and (n,) weights (the
    share of real samples), as infer.make_inference_batch cuts them; long tracks keep
    `max_windows` evenly spread windows."""
    starts = np.arange(0, max(len(audio), 1), hop)
    if max_windows and len(starts) > max_windows:
        starts = starts[np.linspace(0, len(starts) - 1, max_windows).round().astype(int)]
    out = np.zeros((len(starts), window), np.float32)
    mask = np.zeros((len(starts), window), bool)
    weights = np.zeros(len(starts), np.float64)
    for i, start in enumerate(starts):
        piece = audio[start : start + window]
        out[i, : len(piece)] = piece
        mask[i, : len(piece)] = True
        weights[i] = max(len(piece), 1) / window
    return out, mask, weights


class AestheticsStage(Stage):
    name: ClassVar[str] = "aesthetics"
    version: ClassVar[int] = 1
    table: ClassVar[str] = "aesthetics"
    resources: ClassVar[str] = "gpu"
    config_class = AestheticsConfig
    config: AestheticsConfig

    def __init__(self, config: AestheticsConfig | None = None, corpus=None):
        super().__init__(config, corpus)
        self.model = None
        self.model_path = ""
        self.device = "cpu"

    def setup(self) -> None:
        if self.model is not None:
            return
        import torch

        cfg = self.config
        self.device = (
            cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        )
        precision = (
            cfg.precision
            if cfg.precision != "auto"
            else ("bf16" if self.device == "cuda" else "32")
        )
        spec = REGISTRY["audiobox-aesthetics"]
        where = locate(spec, cfg.model)
        if not where.present:
            raise StageUnavailable(missing_message(spec, where.looked, "Audiobox Aesthetics"))
        self.model_path = where.path
        self.model = load_model(where.path, precision, self.device)
        self.transform = {a: self.model.target_transform[a] for a in AXES}

    def scores(self, audios: list[np.ndarray]) -> list[dict[str, tuple[float, float, int]]]:
        """Per track: axis -> (weighted mean, weighted std, windows), one batched pass over all windows."""
        import torch

        cfg = self.config
        window, hop = int(cfg.window_s * SAMPLE_RATE), int(cfg.hop_s * SAMPLE_RATE)
        cut = [windows(a, window, hop, cfg.max_windows) for a in audios]
        wavs = np.concatenate([c[0] for c in cut])
        masks = np.concatenate([c[1] for c in cut])
        preds = {a: [] for a in AXES}
        step = max(1, cfg.window_batch)
        with torch.inference_mode():
            for i in range(0, len(wavs), step):
                batch = {
                    "wav": torch.from_numpy(wavs[i : i + step]).unsqueeze(1).to(self.device),
                    "mask": torch.from_numpy(masks[i : i + step]).unsqueeze(1).to(self.device),
                }
                out = self.model(batch)
                for a in AXES:
                    preds[a].append(out[a].float().cpu().numpy())
        values = {
            a: np.concatenate(preds[a]) * self.transform[a]["std"] + self.transform[a]["mean"]
            for a in AXES
        }
        results, offset = [], 0
        for _, _, weights in cut:
            n = len(weights)
            track = {}
            for a in AXES:
                v = values[a][offset : offset + n]
                mean = float(np.average(v, weights=weights))
                std = float(np.sqrt(np.average((v - mean) ** 2, weights=weights)))
                track[a] = (mean, std, n)
            results.append(track)
            offset += n
        return results

    def process(self, tracks: list[Track]) -> list[dict[str, Any] | BaseException]:
        self.setup()
        results: list[dict[str, Any] | BaseException | None] = [None] * len(tracks)
        audios, slots = [], []
        for i, track in enumerate(tracks):
            try:
                audio, _ = track.finite_audio(SAMPLE_RATE, mono=True)
                audios.append(np.ascontiguousarray(audio, np.float32))
                slots.append(i)
            except Exception as exc:  # one bad track costs one row
                results[i] = exc
        if audios:
            for i, scores in zip(slots, self.scores(audios), strict=True):
                results[i] = self._row(scores)
        return results  # type: ignore[return-value]

    def _row(self, scores: dict[str, tuple[float, float, int]]) -> dict[str, Any]:
        cfg = self.config
        row: dict[str, Any] = {}
        reasons = []
        for axis in AXES:
            mean, std, n = scores[axis]
            row[f"aes_{axis.lower()}"] = mean
            row[f"aes_{axis.lower()}_std"] = std
            threshold = getattr(cfg, f"min_{axis.lower()}")
            if threshold and mean < threshold:
                reasons.append(f"{axis.lower()}<{threshold:g}")
        row.update(
            aes_windows=n,
            aesthetics_pass=not reasons,
            aesthetics_reasons=reasons,
            aes_model=cfg.model,
        )
        return row
