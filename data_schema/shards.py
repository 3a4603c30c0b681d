"""The features shard: the on-disk format the trainer reads (one safetensors file per track).

Per track, one float16 safetensors shard, stored under its own sha256
(`features/<aa>/<sha256>.safetensors`, so identical content is stored once and a shard never
changes under a reader), holding:

    latent            (8, 16, F)   DCAE latent of the whole track (mel at 86.13 fps, /8 in time)
    text.<style>      (L, D)       text-encoder states of each caption style (valid tokens only)
    lyrics            (N,)         lyric token ids (int32)
    repa.mert         (T75, 1024)  MERT-v1 hidden states, 24 kHz input, 75 frames / s
    repa.mhubert      (T50, 768)   mHuBERT-147 hidden states, 16 kHz input, 50 frames / s
    speaker           (512,)       x-vector of the vocals (zeros for instrumentals)

and metadata (captions per style, REPA frame rates, which models made it, and for the lyrics
`lyric_lines`, the transcript's timed lines as {"start", "end", "text"}, and `lyrics_untimed`,
true when sung lyrics have no timestamps, so the trainer can slice lyrics to an audio crop). The
`features` stage (annotate/features.py) writes shards; the trainer (train/data.py) reads them.
Shards written before those two keys existed still read.
"""

from __future__ import annotations

import json
import math
from typing import Any

SHARD_FORMAT = "songmill-features/1"


def shard_bytes(tensors: dict[str, Any], metadata: dict[str, Any]) -> bytes:
    from safetensors.torch import save

    meta = {"format": SHARD_FORMAT, **{k: json.dumps(v) for k, v in metadata.items()}}
    return save({k: v.contiguous() for k, v in tensors.items()}, metadata=meta)


def shard_relpath(sha256: str) -> str:
    return f"features/{sha256[:2]}/{sha256}.safetensors"


class FeatureShard:
    """Read access to one track's shard; local files are memory-mapped and sliced lazily."""

    def __init__(self, get, keys: set[str], metadata: dict[str, str]):
        self._get = get  # (key, start, stop) -> tensor rows [start, stop) along axis 0 / last
        self.keys = keys
        if metadata.get("format") != SHARD_FORMAT:
            raise ValueError(f"not a songmill features shard (format {metadata.get('format')!r})")
        self.meta = {k: json.loads(v) for k, v in metadata.items() if k != "format"}

    @classmethod
    def open(cls, url: str) -> FeatureShard:
        import fsspec

        fs, path = fsspec.core.url_to_fs(url)
        if isinstance(fs, fsspec.implementations.local.LocalFileSystem):
            from safetensors import safe_open

            handle = safe_open(path, framework="pt")

            def get(key, start=None, stop=None, axis=0):
                if start is None:
                    return handle.get_tensor(key)
                sl = handle.get_slice(key)
                index = (slice(None),) * axis + (slice(start, stop),)
                return sl[index]

            return cls(get, set(handle.keys()), handle.metadata() or {})
        from safetensors.torch import load

        with fs.open(path, "rb") as f:
            blob = f.read()
        tensors = load(blob)
        metadata = _safetensors_metadata(blob)

        def get_loaded(key, start=None, stop=None, axis=0):
            t = tensors[key]
            return t if start is None else t.narrow(axis, start, min(stop, t.shape[axis]) - start)

        return cls(get_loaded, set(tensors), metadata)

    @property
    def latent_frames(self) -> int:
        return int(self.meta["latent_frames"])

    @property
    def text_styles(self) -> list[str]:
        return sorted(k.removeprefix("text.") for k in self.keys if k.startswith("text."))

    def latent(self, start: int = 0, frames: int | None = None):
        frames = self.latent_frames - start if frames is None else frames
        return self._get("latent", start, start + frames, 2).float()

    def caption(self, style: str) -> str:
        return self.meta.get("captions", {}).get(style, "")

    def text_embedding(self, style: str):
        return self._get(f"text.{style}").float()

    def lyric_ids(self):
        import torch

        return (
            self._get("lyrics").long()
            if "lyrics" in self.keys
            else torch.zeros(0, dtype=torch.long)
        )

    def speaker(self):
        import torch

        if "speaker" in self.keys:
            return self._get("speaker").float()
        return torch.zeros(int(self.meta.get("speaker_dim", 512)))

    def repa_targets(self, start_s: float = 0.0, length_s: float | None = None) -> dict[str, Any]:
        """name -> (T, D) target frames covering [start_s, start_s + length_s)."""
        out = {}
        for name, fps in self.meta.get("repa_fps", {}).items():
            key = f"repa.{name}"
            if key not in self.keys:
                continue
            if length_s is None:
                out[name] = self._get(key).float()
                continue
            first = int(math.floor(start_s * fps))
            count = max(1, int(round(length_s * fps)))
            out[name] = self._get(key, first, first + count).float()
        return out


def _safetensors_metadata(blob: bytes) -> dict[str, str]:
    header_len = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + header_len])
    return header.get("__metadata__", {})
