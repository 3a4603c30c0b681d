"""Training data from a manifest Parquet (`songmill manifest --out FILE.parquet`).

Two datasets share one deterministic, resumable batch order:
- `MelCropDataset` (DCAE): decodes a random crop of each track's audio and turns it into a mel
  spectrogram inside the DataLoader worker.
- `FeatureDataset` (DiT): reads the cached features shard of each track (DCAE latents, text
  embeddings per caption style, lyric ids, REPA targets, speaker vector) and crops it.

Every random choice of a sample (crop offset, caption style) comes from a generator seeded by
(seed, epoch, slot in the epoch), never from a worker's RNG, so the data a step sees depends on
the step alone: a resumed run sees exactly what an uninterrupted one would, whatever the number
of workers or ranks.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from songmill.data_schema.manifest import ManifestError, ManifestRecord
from songmill.model.config import LATENT_DOWNSAMPLE, LATENT_FPS, SAMPLE_RATE

PAD_MEL = -1.0  # log-mel floor after scaling to [-1, 1]: padding sounds like silence


# -- batch order ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleKey:
    """What a dataset needs to produce one sample deterministically."""

    index: int  # row of the manifest
    epoch: int
    slot: int  # position in the epoch's global order: seeds the sample's random choices
    seed: int


class BucketBatchOrder:
    """Global batches of similar-length tracks, reshuffled every epoch, split across ranks.

    An epoch: shuffle, group by length bucket, cut each bucket into global batches of
    batch_size * world_size (leftovers of all buckets pooled into mixed batches), shuffle the
    batches. Rank r takes the r-th slice of each global batch, so ranks read disjoint samples.
    A corpus smaller than one global batch is repeated to fill it.
    """

    def __init__(
        self,
        lengths: Sequence[float],
        batch_size: int,
        bucket: float,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ):
        if not lengths:
            raise ManifestError("no samples to train on")
        self.lengths = list(lengths)
        self.batch_size, self.bucket, self.seed = batch_size, bucket, seed
        self.rank, self.world_size = rank, world_size

    def epoch_batches(self, epoch: int) -> list[list[SampleKey]]:
        """Every rank's share of every batch of this epoch, as SampleKeys."""
        rng = np.random.default_rng([self.seed, epoch, 0xBA7C])
        global_size = self.batch_size * self.world_size
        order = rng.permutation(len(self.lengths))
        while len(order) < global_size:
            order = np.concatenate([order, rng.permutation(len(self.lengths))])
        buckets: dict[int, list[int]] = {}
        for idx in order:
            buckets.setdefault(int(self.lengths[idx] // self.bucket), []).append(int(idx))
        batches, leftovers = [], []
        for key in sorted(buckets):
            members = buckets[key]
            cut = len(members) - len(members) % global_size
            batches += [members[i : i + global_size] for i in range(0, cut, global_size)]
            leftovers += members[cut:]
        cut = len(leftovers) - len(leftovers) % global_size
        batches += [leftovers[i : i + global_size] for i in range(0, cut, global_size)]
        batches = [batches[i] for i in rng.permutation(len(batches))]
        out = []
        for b, batch in enumerate(batches):
            mine = range(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
            out.append([SampleKey(batch[j], epoch, b * global_size + j, self.seed) for j in mine])
        return out


class _EpochSampler(torch.utils.data.Sampler):
    def __init__(self, batches: list[list[SampleKey]]):
        self.batches = batches

    def __iter__(self) -> Iterator[list[SampleKey]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


@dataclass
class DataPosition:
    """Where the data stream stands: the next batch is batch `batch` of epoch `epoch`."""

    epoch: int = 0
    batch: int = 0

    def to_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch}


class BatchStream:
    """Endless batches from `dataset` in `order`, resumable from a DataPosition.

    `position` always names the batch the next `next()` returns, whatever the loader prefetched.
    """

    def __init__(
        self,
        dataset: torch.utils.data.Dataset,
        order: BucketBatchOrder,
        collate,
        num_workers: int = 0,
        position: DataPosition | None = None,
    ):
        self.dataset, self.order, self.collate = dataset, order, collate
        self.num_workers = num_workers
        self.position = position or DataPosition()
        self._iter: Iterator[Any] | None = None

    def _start_epoch(self) -> None:
        batches = self.order.epoch_batches(self.position.epoch)[self.position.batch :]
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=_EpochSampler(batches),
            collate_fn=self.collate,
            num_workers=self.num_workers,
            persistent_workers=False,
            # forkserver, not fork: a fork of a process that already runs threads (DuckDB,
            # Prefect, tensorboard writers) can die in the child.
            multiprocessing_context="forkserver" if self.num_workers > 0 else None,
            # Its own generator: creating loader iterators must not draw from the global RNG
            # that dropout and the training step use.
            generator=torch.Generator().manual_seed(self.order.seed),
        )
        self._iter = iter(loader)

    def __next__(self) -> Any:
        for _ in range(2):
            if self._iter is None:
                self._start_epoch()
            try:
                batch = next(self._iter)
            except StopIteration:
                self._iter = None
                self.position = DataPosition(self.position.epoch + 1, 0)
                continue
            self.position = DataPosition(self.position.epoch, self.position.batch + 1)
            return batch
        raise ManifestError("an epoch produced no batches")

    def __iter__(self) -> BatchStream:
        return self


def sample_rng(key: SampleKey) -> np.random.Generator:
    return np.random.default_rng([key.seed, key.epoch, key.slot, 0x5A3])


def crop_length_s(duration_s: float, max_crop_s: float) -> float:
    return min(float(duration_s), max_crop_s)


# -- DCAE: mel crops of the audio -------------------------------------------------------------


class MelCropDataset(torch.utils.data.Dataset):
    """Random crops (up to max_crop_s) of each track as stereo 44.1 kHz mel spectrograms."""

    def __init__(self, rows: Sequence[ManifestRecord], mel_config: Any, max_crop_s: float):
        self.rows, self.mel_config, self.max_crop_s = rows, mel_config, max_crop_s
        self._mel: torch.nn.Module | None = None  # built lazily, once per worker process

    def lengths(self) -> list[float]:
        return [crop_length_s(r.duration_s, self.max_crop_s) for r in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: SampleKey) -> dict[str, Any]:
        row = self.rows[key.index]
        rng = sample_rng(key)
        wav = load_crop(row, self.max_crop_s, rng)
        if self._mel is None:
            from songmill.model.mel import MelSpectrogram

            self._mel = MelSpectrogram(self.mel_config).eval()
        with torch.no_grad():
            mel = self._mel(torch.from_numpy(wav).unsqueeze(0))[0]
        return {"mel": mel, "track_id": row.track_id}


def load_crop(row: ManifestRecord, max_crop_s: float, rng: np.random.Generator) -> np.ndarray:
    """A random crop of a track as float32 (2, samples) at 44.1 kHz; reads only the crop when the
    file is seekable, decodes the whole file otherwise."""
    from songmill.annotate.audio import decode, resample

    duration = float(row.duration_s)
    crop_s = crop_length_s(duration, max_crop_s)
    # A window row (data_schema/windows.py) is cropped inside its window: it starts at offset_s.
    start_s = float(row.offset_s or 0.0) + float(rng.uniform(0.0, max(duration - crop_s, 0.0)))
    samples, sr = None, None
    try:
        import fsspec
        import soundfile as sf

        with fsspec.open(row.uri, "rb") as f, sf.SoundFile(f) as snd:
            sr = snd.samplerate
            snd.seek(int(start_s * sr))
            samples = snd.read(int(round(crop_s * sr)), dtype="float32", always_2d=True)
    except Exception:  # not seekable by libsndfile (m4a, odd mp3): decode it all, then cut
        full, sr = decode(row.uri)
        first = int(start_s * sr)
        samples = full[first : first + int(round(crop_s * sr))]
    samples = resample(samples, sr, SAMPLE_RATE)
    if samples.shape[1] == 1:
        samples = np.repeat(samples, 2, axis=1)
    return np.ascontiguousarray(samples[:, :2].T, dtype=np.float32)


def collate_mel(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Pads mels to the longest (a multiple of 8 frames, as the DCAE needs) with a frame mask."""
    frames = max(i["mel"].shape[-1] for i in items)
    frames = int(math.ceil(frames / LATENT_DOWNSAMPLE) * LATENT_DOWNSAMPLE)
    mel = torch.full((len(items), *items[0]["mel"].shape[:-1], frames), PAD_MEL)
    mask = torch.zeros(len(items), frames, dtype=torch.bool)
    for b, item in enumerate(items):
        n = item["mel"].shape[-1]
        mel[b, ..., :n] = item["mel"]
        mask[b, :n] = True
    return {"mel": mel, "frame_mask": mask, "track_ids": [i["track_id"] for i in items]}


# -- DiT: cached features ---------------------------------------------------------------------


class FeatureDataset(torch.utils.data.Dataset):
    """Crops of each track's cached features (see data_schema/shards.py for the shard layout).

    `lyric_crop` keeps lyrics and audio in agreement (TrainConfig.lyric_crop): "timestamps"
    crops anywhere and keeps the timed lyric lines (the shard's `lyric_lines`, from the
    transcript) whose middle falls inside the crop, re-tokenised (one line each) with the
    features' lyric tokenizer; a track with sung lyrics but no timestamps (the shard's
    `lyrics_untimed`) is cropped from its start instead, an instrumental anywhere. "start" crops
    every track from its start with all its lyrics (ACE-Step); "full" crops anywhere and keeps
    all the lyrics.
    """

    def __init__(
        self,
        rows: Sequence[ManifestRecord],
        max_crop_s: float,
        max_lyric_tokens: int = 4096,
        lyric_crop: str = "full",
        tokenizer_json: str | None = None,
    ):
        self.rows, self.max_crop_s = rows, max_crop_s
        self.max_lyric_tokens = max_lyric_tokens
        self.lyric_crop = lyric_crop
        self.tokenizer_json = tokenizer_json
        self._tokenizer: Any = None  # built lazily, once per worker process

    def lengths(self) -> list[float]:
        return [crop_length_s(r.duration_s, self.max_crop_s) for r in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def _encode(self, text: str) -> torch.Tensor:
        if self._tokenizer is None:
            from songmill.model.lyric_tokens import LyricTokenizer

            self._tokenizer = LyricTokenizer.from_json(self.tokenizer_json)
        return torch.tensor(self._tokenizer.encode_ids(text), dtype=torch.long)

    def __getitem__(self, key: SampleKey) -> dict[str, Any]:
        from songmill.data_schema.shards import FeatureShard

        row = self.rows[key.index]
        rng = sample_rng(key)
        shard = FeatureShard.open(row.features_url)
        # A window row (offset_s + duration_s) is cropped inside its window, its lyrics by time.
        window = row.offset_s is not None
        first = min(int(float(row.offset_s or 0.0) * LATENT_FPS), max(shard.latent_frames - 1, 0))
        total = (
            min(shard.latent_frames, first + int(math.ceil(float(row.duration_s) * LATENT_FPS)))
            - first
            if window
            else shard.latent_frames
        )
        frames = min(total, max(1, int(self.max_crop_s * LATENT_FPS)))
        start = first + int(rng.integers(0, total - frames + 1))
        lyrics = shard.lyric_ids()
        lines = shard.meta.get("lyric_lines") or []
        untimed = shard.meta.get(
            "lyrics_untimed", bool(len(lyrics)) and not lines
        )  # older shards: any ids
        if not window and (
            self.lyric_crop == "start" or (self.lyric_crop == "timestamps" and untimed)
        ):
            start = 0
        elif (self.lyric_crop == "timestamps" or window) and lines:
            begin_s, end_s = start / LATENT_FPS, (start + frames) / LATENT_FPS
            sung = [
                ln["text"] for ln in lines if begin_s <= 0.5 * (ln["start"] + ln["end"]) < end_s
            ]
            lyrics = self._encode("\n".join(sung)) if sung else torch.zeros(0, dtype=torch.long)
        item: dict[str, Any] = {"track_id": row.track_id, "latent": shard.latent(start, frames)}
        styles = shard.text_styles
        style = styles[int(rng.integers(0, len(styles)))] if styles else None
        item["caption"] = shard.caption(style) if style else ""
        item["text"] = shard.text_embedding(style) if style else None
        lyrics = lyrics[: self.max_lyric_tokens]
        # No lyrics: one pad id, as model.generate conditions an instrumental request.
        item["lyrics"] = lyrics if len(lyrics) else torch.zeros(1, dtype=torch.long)
        item["speaker"] = shard.speaker()
        item["repa"] = shard.repa_targets(start / LATENT_FPS, frames / LATENT_FPS)
        return item


def _pad_stack(
    seqs: list[torch.Tensor | None], fill: float | int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L, ...) padded to the longest and a (B, L) bool mask; None counts as empty."""
    present = [s for s in seqs if s is not None]
    length = max([s.shape[0] for s in present] + [1])
    tail = present[0].shape[1:] if present else ()
    dtype = present[0].dtype if present else torch.float32
    out = torch.full((len(seqs), length, *tail), fill, dtype=dtype)
    mask = torch.zeros(len(seqs), length, dtype=torch.bool)
    for b, s in enumerate(seqs):
        if s is not None and s.shape[0]:
            out[b, : s.shape[0]] = s
            mask[b, : s.shape[0]] = True
    return out, mask


def collate_features(items: list[dict[str, Any]]) -> dict[str, Any]:
    latents = [i["latent"].permute(2, 0, 1) for i in items]  # (F, 8, 16): pad along frames
    latent, frame_mask = _pad_stack(latents)
    batch: dict[str, Any] = {
        "latent": latent.permute(0, 2, 3, 1).contiguous(),  # (B, 8, 16, F)
        "frame_mask": frame_mask,
        "track_ids": [i["track_id"] for i in items],
        "captions": [i["caption"] for i in items],
    }
    batch["text"], batch["text_mask"] = _pad_stack([i["text"] for i in items])
    batch["lyrics"], batch["lyrics_mask"] = _pad_stack([i["lyrics"] for i in items])
    batch["speaker"] = torch.stack([i["speaker"] for i in items])
    names = sorted({name for i in items for name in i["repa"]})
    batch["repa"] = {}
    for name in names:
        batch["repa"][name] = _pad_stack([i["repa"].get(name) for i in items])
    return batch
