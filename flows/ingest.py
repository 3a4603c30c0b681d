"""Ingest: register audio files in the corpus, incrementally.

`track_id` is the sha256 of the file's bytes, so the same song under two paths is one track that
remembers both URIs (the `sources` table). A file whose path, size and mtime are unchanged since
the last run is neither read nor hashed again. Files that are not decodable audio become `errors`
rows; the run goes on.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import fsspec
from songmill.annotate.audio import DecodeError, decode_with_info, probe
from songmill.annotate.base import RUNTIME, StageConfig
from songmill.data_schema.store import Corpus, new_run_id, utcnow

AUDIO_EXTENSIONS = (
    ".wav", ".wave", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".mp4",
    ".aif", ".aiff", ".aifc", ".wma", ".webm", ".caf", ".w64", ".mka",
)
GLOB_CHARS = set("*?[")


@dataclass
class IngestConfig(StageConfig):
    # "header": probe stream parameters only; "decode": decode every file fully (exact frame
    # counts, catches truncated and NaN-filled files at ingest instead of at annotate).
    verify: str = "header"
    extensions: list[str] = field(default_factory=lambda: list(AUDIO_EXTENSIONS))
    batch_size: int = field(default=64, metadata=RUNTIME)


@dataclass(frozen=True)
class FoundFile:
    uri: str
    size: int
    mtime: float


@dataclass
class IngestSummary:
    run_id: str
    found: int = 0
    unchanged: int = 0
    new_tracks: int = 0
    new_uris: int = 0  # already-known content under a new path
    errors: int = 0
    missing_sources: list[str] = field(default_factory=list)

    def add(self, other: IngestSummary) -> None:
        self.new_tracks += other.new_tracks
        self.new_uris += other.new_uris
        self.errors += other.errors


def _mtime(info: dict[str, Any]) -> float:
    for key in ("mtime", "created", "LastModified", "last_modified", "updated"):
        value = info.get(key)
        if value is None:
            continue
        if hasattr(value, "timestamp"):
            return float(value.timestamp())
        try:
            return float(value)
        except (TypeError, ValueError):
            continue
    return 0.0


def discover(sources: Sequence[str], extensions: Iterable[str] = AUDIO_EXTENSIONS) -> tuple[list[FoundFile], list[str]]:
    """Files named by local paths, directories, globs or fsspec URLs. Directories and globs keep
    only audio extensions; a file named explicitly is always taken. Returns (files, missing)."""
    exts = tuple(e.lower() for e in extensions)
    found: dict[str, FoundFile] = {}
    missing: list[str] = []
    for source in sources:
        fs, path = fsspec.core.url_to_fs(source)
        local = isinstance(fs, fsspec.implementations.local.LocalFileSystem)
        explicit = False
        if GLOB_CHARS & set(path):
            paths = fs.glob(path)
        elif fs.isdir(path):
            paths = fs.find(path)
        elif fs.exists(path):
            paths, explicit = [path], True
        else:
            missing.append(source)
            continue
        for p in paths:
            if not explicit and not p.lower().endswith(exts):
                continue
            info = fs.info(p)
            if info.get("type") == "directory":
                continue
            uri = os.path.abspath(p) if local else fs.unstrip_protocol(p)
            found[uri] = FoundFile(uri, int(info.get("size") or 0), _mtime(info))
    return sorted(found.values(), key=lambda f: f.uri), missing


def known_sources(corpus: Corpus) -> dict[str, tuple[int, float, str | None]]:
    rows = corpus.sql("SELECT uri, size_bytes, mtime, track_id FROM sources").to_pylist()
    return {r["uri"]: (r["size_bytes"], r["mtime"], r["track_id"]) for r in rows}


def known_track_ids(corpus: Corpus) -> set[str]:
    return set(corpus.sql("SELECT track_id FROM raw_tracks").column("track_id").to_pylist())


def ingest_batch(corpus: Corpus, files: Sequence[FoundFile], known_ids: set[str], run_id: str, verify: str = "header") -> IngestSummary:
    """Hash and probe `files`; write their tracks, sources and errors rows (one part each).

    `known_ids` is updated in place so that duplicates across batches of one run are caught.
    """
    summary = IngestSummary(run_id)
    tracks, sources, errors = [], [], []
    for f in files:
        now = utcnow()
        track_id = None
        try:
            with fsspec.open(f.uri, "rb") as fh:
                data = fh.read()
            track_id = hashlib.sha256(data).hexdigest()
            if track_id in known_ids:
                summary.new_uris += 1
            else:
                info = decode_with_info(data)[1] if verify == "decode" else probe(data)
                tracks.append(
                    {
                        "track_id": track_id,
                        "uri": f.uri,
                        "size_bytes": len(data),
                        "duration_s": info.duration_s,
                        "frames": info.frames,
                        "sample_rate": info.sample_rate,
                        "channels": info.channels,
                        "codec": info.codec,
                        "container": info.container,
                        "bit_depth": info.bit_depth,
                        "run_id": run_id,
                        "created_at": now,
                    }
                )
                known_ids.add(track_id)
                summary.new_tracks += 1
            status = "ok"
        except (DecodeError, OSError, ValueError, RuntimeError) as exc:
            errors.append(
                {
                    "track_id": track_id,
                    "uri": f.uri,
                    "stage": "ingest",
                    "stage_version": 1,
                    "config_hash": verify,
                    "error_type": type(exc).__name__,
                    "message": str(exc)[:2000],
                    "retryable": False,
                    "run_id": run_id,
                    "created_at": now,
                }
            )
            summary.errors += 1
            status = "error"
        sources.append(
            {
                "uri": f.uri,
                "size_bytes": f.size,
                "mtime": f.mtime,
                "track_id": track_id,
                "status": status,
                "run_id": run_id,
                "created_at": now,
            }
        )
    # tracks and errors before sources: `sources` marks a file as seen, so a kill before it only
    # means the file is looked at again next run (and then found to be a known track_id).
    corpus.write("tracks", tracks)
    corpus.write("errors", errors)
    corpus.write("sources", sources)
    return summary


def finish_ingest(corpus: Corpus) -> None:
    corpus.compact_if_needed(["tracks", "sources", "errors"])


def plan_ingest(corpus: Corpus, sources: Sequence[str], config: IngestConfig) -> tuple[list[FoundFile], IngestSummary]:
    """Discover files and drop those unchanged since the last run (path + size + mtime)."""
    files, missing = discover(sources, config.extensions)
    known = known_sources(corpus)
    summary = IngestSummary(new_run_id(), found=len(files), missing_sources=missing)
    todo = []
    for f in files:
        seen = known.get(f.uri)
        if seen is not None and seen[0] == f.size and seen[1] == f.mtime:
            summary.unchanged += 1
        else:
            todo.append(f)
    return todo, summary


def ingest(
    corpus: Corpus,
    sources: Sequence[str],
    config: IngestConfig | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> IngestSummary:
    """Ingest in-process (the Prefect flow in flows/pipeline.py does the same, a task per batch)."""
    config = config or IngestConfig()
    todo, summary = plan_ingest(corpus, sources, config)
    known_ids = known_track_ids(corpus)
    for start in range(0, len(todo), config.batch_size):
        batch = todo[start : start + config.batch_size]
        summary.add(ingest_batch(corpus, batch, known_ids, summary.run_id, config.verify))
        if on_batch is not None:
            on_batch(start + len(batch), len(todo))
    finish_ingest(corpus)
    return summary
