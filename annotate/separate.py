"""`separate` stage: Demucs (htdemucs by default) vocal / accompaniment stems.

Weights are never downloaded here. A model name (`htdemucs`, `htdemucs_ft`, ...) is a bag of
signatures (demucs' own `remote/<name>.yaml`, or `<model_dir>/<name>.yaml`); each signature is
looked up as
  1. `<model_dir>/<sig>-<checksum>.th`, `<model_dir>/<sig>.th` or `<model_dir>/<sig>.safetensors`,
  2. the torch hub cache, `<torch hub dir>/checkpoints/<sig>-<checksum>.th` (where `demucs`
     itself caches the files it downloads),
  3. the Hugging Face cache of `adefossez/HTDemucs*` (demucs >= 4.1 downloads from there),
and loaded with demucs' own loaders (`demucs.states.load_model`, checksum checked when the
file name carries one; `demucs.hf.load_safetensors_model`). `model` may also be a path to a
single `.th` / `.safetensors` file or a bag `.yaml`. When a file is missing the stage says which,
and where to download it from.

Tracks of a batch with similar lengths are separated together (demucs' `apply_model` takes a
batch), which is what keeps a GPU busy; on CPU the default is one track at a time.
"""

from __future__ import annotations

import io
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from songmill.annotate.base import RUNTIME, Stage, StageConfig, StageUnavailable, Track

DEMUCS_ROOT_URL = "https://dl.fbaipublicfiles.com/demucs/"
HF_NAMESPACE = "adefossez"
FRAME_S = 0.05


@dataclass
class SeparateConfig(StageConfig):
    model: str = "htdemucs"
    model_dir: str | None = None
    segment: float | None = None  # seconds per chunk; None: the model's own (7.8 s for htdemucs)
    overlap: float = 0.25
    shifts: int = 1  # random time shifts averaged (demucs' default); 0 = none
    # A 50 ms frame has vocals when the vocal stem is above this level (dBFS) and no more than
    # `activity_margin_db` below the mix in that frame (separation leaves some bleed).
    activity_floor_db: float = -50.0
    activity_margin_db: float = 15.0
    instrumental_below: float = 0.05  # vocal activity ratio under which a track is instrumental
    # Tracks separated together (padded to a common length); 0: 8 on CUDA, 1 on CPU.
    batch_tracks: int = field(default=0, metadata=RUNTIME)


def _hf_repo(name: str) -> str:
    if name == "htdemucs":
        return f"{HF_NAMESPACE}/HTDemucs"
    if name.startswith("htdemucs_"):
        return f"{HF_NAMESPACE}/HTDemucs-{name[len('htdemucs_') :]}"
    return f"{HF_NAMESPACE}/Demucs-{name}"


def _remote_files() -> dict[str, str]:
    """Signature -> path relative to DEMUCS_ROOT_URL, from demucs' own `remote/files.txt`."""
    import demucs

    listing = Path(demucs.__file__).parent / "remote" / "files.txt"
    root, files = "", {}
    for line in listing.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("root:"):
            root = line.split(":", 1)[1].strip()
        else:
            files[line.split("-", 1)[0]] = root + line
    return files


def _bag_definition(name: str, model_dir: str | None) -> tuple[dict[str, Any], str | None]:
    """The bag yaml of a model name, and the name it has on the Hugging Face hub (if any)."""
    import demucs
    import yaml

    candidates = []
    if name.endswith((".yaml", ".yml")):
        candidates.append(Path(name))
    if model_dir:
        candidates.append(Path(model_dir) / f"{name}.yaml")
    candidates.append(Path(demucs.__file__).parent / "remote" / f"{name}.yaml")
    for path in candidates:
        if path.is_file():
            with open(path) as f:
                return yaml.safe_load(f), name
    return {"models": [name]}, None  # a single signature


def _find_signature(
    sig: str, model_dir: str | None, hf_name: str | None, remote: dict[str, str]
) -> Path | None:
    """The local weights file of one signature, or None."""
    if model_dir:
        folder = Path(model_dir)
        for pattern in (f"{sig}-*.th", f"{sig}.th", f"{sig}.safetensors"):
            hits = sorted(folder.glob(pattern))
            if hits:
                return hits[0]
    hub_file = _hub_checkpoint(sig, remote)
    if hub_file.is_file():
        return hub_file
    if hf_name is not None:
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(_hf_repo(hf_name), f"{sig}.safetensors")
        except Exception:  # no huggingface_hub, or an unreadable cache
            cached = None
        if isinstance(cached, str) and os.path.isfile(cached):
            return Path(cached)
    return None


def _hub_checkpoint(sig: str, remote: dict[str, str]) -> Path:
    """Where `demucs` caches a downloaded signature: the torch hub checkpoints folder."""
    import torch

    return (
        Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(remote.get(sig, f"{sig}.th"))
    )


def load_demucs(name: str, model_dir: str | None = None):
    """A demucs model (a `BagOfModels`, or one model for a single file) from local files only."""
    from demucs.apply import BagOfModels
    from demucs.hf import load_safetensors_model
    from demucs.repo import check_checksum
    from demucs.states import load_model

    def load_file(path: Path):
        if path.suffix == ".safetensors":
            return load_safetensors_model(path)
        if "-" in path.stem:  # <sig>-<sha256 prefix>.th: verify as demucs does
            check_checksum(path, path.stem.rsplit("-", 1)[1])
        return load_model(path)

    if name.endswith((".th", ".safetensors")):
        path = Path(name)
        if not path.is_file():
            raise StageUnavailable(f"demucs weights not found: {path}")
        return load_file(path)
    bag, hf_name = _bag_definition(name, model_dir)
    remote = _remote_files()
    paths, missing = [], []
    for sig in map(str, bag["models"]):
        path = _find_signature(sig, model_dir, hf_name, remote)
        if path is None:
            filename = os.path.basename(remote.get(sig, f"{sig}.th"))
            target = Path(model_dir) / filename if model_dir else _hub_checkpoint(sig, remote)
            source = DEMUCS_ROOT_URL + remote[sig] if sig in remote else f"the {sig} checkpoint"
            missing.append(f"{target} (download {source})")
        paths.append(path)
    if missing:
        raise StageUnavailable(
            f"demucs model {name!r}: weights file(s) missing: "
            + "; ".join(missing)
            + f". Looked in {'separate.model_dir, ' if model_dir else ''}the torch hub cache and the "
            f"Hugging Face cache. Online, `python -c \"import demucs.pretrained as p; p.get_model('{name}')\"` "
            "fills those caches (for the default, `songmill models fetch htdemucs`); offline, copy the "
            "files there or into a folder named by separate.model_dir."
        )
    return BagOfModels([load_file(p) for p in paths], bag.get("weights"), bag.get("segment"))


def _device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def flac_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, np.clip(samples, -1.0, 1.0), sample_rate, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def _frame_db(x: np.ndarray, frame: int) -> np.ndarray:
    """RMS level (dBFS) of consecutive frames of a (frames, channels) signal."""
    n = x.shape[0] // frame
    if n == 0:
        return np.full(1, -120.0)
    power = (x[: n * frame].reshape(n, frame, -1) ** 2).mean(axis=(1, 2))
    return 10 * np.log10(power + 1e-12)


def vocal_activity(
    vocals: np.ndarray, mix: np.ndarray, sr: int, floor_db: float, margin_db: float
) -> float:
    frame = max(1, int(FRAME_S * sr))
    v, m = _frame_db(vocals, frame), _frame_db(mix, frame)
    return float(np.mean((v > floor_db) & (v > m - margin_db)))


class SeparateStage(Stage):
    name: ClassVar[str] = "separate"
    version: ClassVar[int] = 1
    table: ClassVar[str] = "separation"
    resources: ClassVar[str] = "gpu"
    config_class = SeparateConfig
    config: SeparateConfig

    def __init__(self, config: SeparateConfig | None = None, corpus=None):
        super().__init__(config)
        self.corpus = corpus
        self.model = None
        self.device = "cpu"

    @property
    def model_tag(self) -> str:
        base = os.path.basename(self.config.model)
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", base.rsplit(".", 1)[0] if "." in base else base)

    def setup(self) -> None:
        if self.model is not None:
            return
        if self.corpus is None:
            raise StageUnavailable(
                "the separate stage needs its corpus (stage.corpus) to write the stems"
            )
        try:
            import demucs  # noqa: F401
        except ImportError:
            raise StageUnavailable(
                "demucs is not installed: pip install --no-deps demucs einops julius"
            ) from None
        self.device = _device(self.config.device)
        model = load_demucs(self.config.model, self.config.model_dir)
        if "vocals" not in model.sources:
            raise StageUnavailable(
                f"demucs model {self.config.model!r} has no vocals source: {model.sources}"
            )
        self.model = model.to(self.device).eval()

    def process(self, tracks):
        if self.model is None:
            self.setup()
        prepared: list[tuple[int, np.ndarray] | BaseException] = []
        for track in tracks:
            try:
                audio, _ = track.audio(sample_rate=self.model.samplerate)
                prepared.append((len(prepared), _to_stereo(audio, self.model.audio_channels)))
            except Exception as exc:  # undecodable: this track only
                prepared.append(exc)
        results: list[Any] = [p if isinstance(p, BaseException) else None for p in prepared]
        ready = sorted(
            (p for p in prepared if not isinstance(p, BaseException)), key=lambda p: p[1].shape[0]
        )
        for group in _length_groups(ready, self._batch_tracks()):
            try:
                stems = self._separate(
                    [audio for _, audio in group], [tracks[i].track_id for i, _ in group]
                )
                for (i, audio), (vocals, accompaniment) in zip(group, stems, strict=True):
                    results[i] = self._row(tracks[i], audio, vocals, accompaniment)
            except Exception as exc:  # e.g. out of memory on a long group: retry one by one
                if len(group) == 1:
                    results[group[0][0]] = exc
                    continue
                for i, audio in group:
                    try:
                        ((vocals, accompaniment),) = self._separate([audio], [tracks[i].track_id])
                        results[i] = self._row(tracks[i], audio, vocals, accompaniment)
                    except Exception as single_exc:
                        results[i] = single_exc
        return results

    def _batch_tracks(self) -> int:
        if self.config.batch_tracks > 0:
            return self.config.batch_tracks
        return 8 if self.device.startswith("cuda") else 1

    def _separate(
        self, audios: list[np.ndarray], seeds: list[str]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Stems of tracks of similar length, separated as one batch; each (frames, channels)."""
        import torch
        from demucs.apply import apply_model

        cfg = self.config
        length = max(a.shape[0] for a in audios)
        batch = torch.zeros(len(audios), self.model.audio_channels, length)
        stats = []
        for b, audio in enumerate(audios):
            wav = torch.from_numpy(np.ascontiguousarray(audio.T))
            ref = wav.mean(0)
            mean, std = ref.mean(), ref.std()
            std = std if std > 1e-8 else torch.tensor(1.0)  # digital silence
            batch[b, :, : audio.shape[0]] = (wav - mean) / std  # normalised as `demucs` does
            stats.append((mean, std))
        random.seed("|".join(seeds))  # apply_model draws its shifts from `random`: reproducible
        with torch.inference_mode():
            sources = apply_model(
                self.model, batch, shifts=cfg.shifts, split=True, overlap=cfg.overlap,
                segment=cfg.segment, device=self.device, progress=False,
            )  # fmt: skip
        vocals_at = self.model.sources.index("vocals")
        out = []
        for b, audio in enumerate(audios):
            mean, std = stats[b]
            stems = sources[b, :, :, : audio.shape[0]] * std + mean
            vocals = stems[vocals_at]
            accompaniment = stems.sum(0) - vocals
            out.append((vocals.T.cpu().numpy(), accompaniment.T.cpu().numpy()))
        return out

    def _row(
        self, track: Track, mix: np.ndarray, vocals: np.ndarray, accompaniment: np.ndarray
    ) -> dict[str, Any]:
        cfg = self.config
        sr = self.model.samplerate
        tid = track.track_id
        stem_dir = f"stems/{tid[:2]}/{tid}/{self.model_tag}-{self.config_hash[:8]}"
        vocals_uri = self.corpus.write_bytes(f"{stem_dir}-vocals.flac", flac_bytes(vocals, sr))
        accompaniment_uri = self.corpus.write_bytes(
            f"{stem_dir}-accompaniment.flac", flac_bytes(accompaniment, sr)
        )
        mix_energy = float(np.sum(mix.astype(np.float64) ** 2))
        vocal_energy = float(np.sum(vocals.astype(np.float64) ** 2))
        activity = vocal_activity(vocals, mix, sr, cfg.activity_floor_db, cfg.activity_margin_db)
        return {
            "model": self.config.model,
            "sample_rate": sr,
            "vocals_uri": vocals_uri,
            "accompaniment_uri": accompaniment_uri,
            "vocal_energy_ratio": vocal_energy / mix_energy if mix_energy > 0 else 0.0,
            "vocal_activity_ratio": activity,
            "is_instrumental": activity < cfg.instrumental_below,
            "seconds": mix.shape[0] / sr,
        }


def _to_stereo(audio: np.ndarray, channels: int) -> np.ndarray:
    if audio.ndim == 1:
        audio = audio[:, None]
    if audio.shape[1] == channels:
        return audio
    if audio.shape[1] == 1:
        return np.repeat(audio, channels, axis=1)
    return (
        audio[:, :channels]
        if audio.shape[1] > channels
        else np.repeat(audio.mean(1, keepdims=True), channels, axis=1)
    )


def _length_groups(
    items: list[tuple[int, np.ndarray]], size: int, max_padding: float = 0.25
) -> list[list[tuple[int, np.ndarray]]]:
    """Consecutive (length-sorted) items in groups of at most `size`, padding at most ~25 %."""
    groups: list[list[tuple[int, np.ndarray]]] = []
    for item in items:
        if (
            groups
            and len(groups[-1]) < size
            and item[1].shape[0] <= (1 + max_padding) * groups[-1][0][1].shape[0]
        ):
            groups[-1].append(item)
        else:
            groups.append([item])
    return groups
