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
from songmill.annotate.runner import error_row, stamp_row
from songmill.data_schema.store import Corpus, new_run_id, utcnow

AUDIO_EXTENSIONS = (
    ".wav", ".wave", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".mp4",
    ".aif", ".aiff", ".aifc", ".wma", ".webm", ".caf", ".w64", ".mka",
)
GLOB_CHARS = set("*?[")
# The `stage_version` of ingest's errors rows.
INGEST_VERSION = 1


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


def known_track_ids(corpus: Corpus, candidates: Sequence[str]) -> set[str]:
    """Which of `candidates` the corpus already holds (asked per batch: no corpus-wide set to ship)."""
    if not candidates:
        return set()
    result = corpus.sql(
        "SELECT DISTINCT track_id FROM raw_tracks WHERE track_id IN (SELECT unnest(?::VARCHAR[]))",
        [sorted(set(candidates))],
    )
    return set(result.column("track_id").to_pylist())


def _seen_in_run(corpus: Corpus, run_id: str, uris: Sequence[str]) -> set[str]:
    """Files this run already recorded: a batch that runs again (its worker died) skips them."""
    result = corpus.sql(
        "SELECT uri FROM raw_sources WHERE run_id = ? AND uri IN (SELECT unnest(?::VARCHAR[]))",
        [run_id, list(uris)],
    )
    return set(result.column("uri").to_pylist())


def _track_row(track_id: str, uri: str, data: bytes, verify: str) -> dict[str, Any]:
    info = decode_with_info(data)[1] if verify == "decode" else probe(data)
    return {
        "track_id": track_id,
        "uri": uri,
        "size_bytes": len(data),
        "duration_s": info.duration_s,
        "frames": info.frames,
        "sample_rate": info.sample_rate,
        "channels": info.channels,
        "codec": info.codec,
        "container": info.container,
        "bit_depth": info.bit_depth,
    }


def ingest_batch(corpus: Corpus, files: Sequence[FoundFile], run_id: str, verify: str = "header") -> IngestSummary:
    """Hash and probe `files`; write their tracks, sources and errors rows (one part each).

    Content already in the corpus (or earlier in the batch) is a new path of a known track. Files
    whose `sources` row this run already wrote are skipped, so running a batch twice is harmless.
    """
    summary = IngestSummary(run_id)
    files = [f for f in files if f.uri not in _seen_in_run(corpus, run_id, [f.uri for f in files])]
    hashed: list[tuple[FoundFile, bytes | None, str | None, BaseException | None]] = []
    for f in files:
        try:
            with fsspec.open(f.uri, "rb") as fh:
                data = fh.read()
            hashed.append((f, data, hashlib.sha256(data).hexdigest(), None))
        except (OSError, ValueError, RuntimeError) as exc:
            hashed.append((f, None, None, exc))
    known = known_track_ids(corpus, [h[2] for h in hashed if h[2]])
    tracks, sources, errors = [], [], []
    for f, data, track_id, failure in hashed:
        now = utcnow()
        try:
            if failure is not None:
                raise failure
            if track_id in known:
                summary.new_uris += 1
            else:
                tracks.append(stamp_row(_track_row(track_id, f.uri, data, verify), run_id=run_id, created_at=now))
                known.add(track_id)
                summary.new_tracks += 1
            status = "ok"
        except (DecodeError, OSError, ValueError, RuntimeError) as exc:
            errors.append(
                error_row(
                    stage="ingest", stage_version=INGEST_VERSION, config_hash=verify, track_id=track_id,
                    uri=f.uri, exc=exc, retryable=False, run_id=run_id, created_at=now,
                )
            )
            summary.errors += 1
            status = "error"
        sources.append(
            stamp_row(
                {"uri": f.uri, "size_bytes": f.size, "mtime": f.mtime, "track_id": track_id, "status": status},
                run_id=run_id,
                created_at=now,
            )
        )
    # tracks and errors before sources: `sources` marks a file as seen, so a kill before it only
    # means the file is looked at again next run (and then found to be a known track_id).
    corpus.write("tracks", tracks)
    corpus.write("errors", errors)
    corpus.write("sources", sources)
    return summary


def finish_ingest(corpus: Corpus) -> None:
    corpus.compact_if_needed(["tracks", "sources", "errors"])


def plan_ingest(corpus: Corpus, sources: Sequence[str], config: IngestConfig, run_id: str | None = None) -> tuple[list[FoundFile], IngestSummary]:
    """Discover files and drop those unchanged since the last run (path + size + mtime)."""
    files, missing = discover(sources, config.extensions)
    known = known_sources(corpus)
    summary = IngestSummary(run_id or new_run_id(), found=len(files), missing_sources=missing)
    todo = []
    for f in files:
        seen = known.get(f.uri)
        if seen is not None and seen[0] == f.size and seen[1] == f.mtime:
            summary.unchanged += 1
        else:
            todo.append(f)
    return todo, summary


def ingest_batches(files: Sequence[FoundFile], batch_size: int) -> list[list[FoundFile]]:
    """Batches of about `batch_size` files in which files of equal size stay together: identical
    content has identical size, so batches run in parallel never both claim the same new track."""
    by_size = sorted(files, key=lambda f: (f.size, f.uri))
    batches: list[list[FoundFile]] = []
    for f in by_size:
        if not batches or (len(batches[-1]) >= max(1, batch_size) and batches[-1][-1].size != f.size):
            batches.append([])
        batches[-1].append(f)
    return batches


def ingest(
    corpus: Corpus,
    sources: Sequence[str],
    config: IngestConfig | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> IngestSummary:
    """Ingest in-process (flows/jobs.py's IngestJob runs the same functions on any executor)."""
    config = config or IngestConfig()
    todo, summary = plan_ingest(corpus, sources, config)
    done = 0
    for batch in ingest_batches(todo, config.batch_size):
        summary.add(ingest_batch(corpus, batch, summary.run_id, config.verify))
        done += len(batch)
        if on_batch is not None:
            on_batch(done, len(todo))
    finish_ingest(corpus)
    return summary
