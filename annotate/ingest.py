"""Ingest: register audio files in the corpus, incrementally; the job before the stages.

It lives beside the stages because it does the same kind of work, with the same helpers (decode
and probe from annotate/audio.py, `errors` and `runs` rows stamped as the runner stamps them), in
the same job shape (plan -> batches -> finish) that flows/jobs.py runs on any executor.

`track_id` is the sha256 of the file's bytes, so the same song under two paths is one track that
remembers both URIs (the `sources` table). A file whose path, size and mtime are unchanged since
the last run is neither read nor hashed again. Files that are not decodable audio become `errors`
rows; the run goes on.
"""

from __future__ import annotations

import errno
import hashlib
import os
import socket
import stat
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import duckdb
import fsspec
from songmill.annotate.audio import DecodeError, decode_with_info, probe
from songmill.annotate.base import RUNTIME, StageConfig, config_hash
from songmill.annotate.runner import error_row, stamp_row
from songmill.data_schema.store import Corpus, new_run_id, utcnow

AUDIO_EXTENSIONS = (
    ".wav",
    ".wave",
    ".flac",
    ".mp3",
    ".ogg",
    ".oga",
    ".opus",
    ".m4a",
    ".aac",
    ".mp4",
    ".aif",
    ".aiff",
    ".aifc",
    ".wma",
    ".webm",
    ".caf",
    ".w64",
    ".mka",
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
    skipped: int = 0  # files that are not audio (recorded in `sources` with the reason)
    missing_sources: list[str] = field(default_factory=list)
    to_read: int = 0  # files read and hashed this run (found - unchanged)
    audio_seconds: float = 0.0  # of the new tracks
    wall_s: float = 0.0  # spent reading, hashing and probing, summed over workers

    def add(self, other: IngestSummary) -> None:
        self.new_tracks += other.new_tracks
        self.new_uris += other.new_uris
        self.errors += other.errors
        self.audio_seconds += other.audio_seconds
        self.wall_s += other.wall_s


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


# Leading bytes of the containers soundfile / PyAV decode: how a file with no (or an unknown)
# extension is recognised as audio.
AUDIO_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"RIFF", "wav"),
    (0, b"RF64", "wav"),
    (0, b"fLaC", "flac"),
    (0, b"OggS", "ogg"),
    (0, b"ID3", "mp3"),
    (0, b"FORM", "aiff"),
    (0, b"caff", "caf"),
    (0, b"wvpk", "wavpack"),
    (0, b"\x1aE\xdf\xa3", "matroska"),
    (0, b"0&\xb2u\x8ef\xcf\x11", "asf"),
    (4, b"ftyp", "mp4"),
    (0, b"riff", "w64"),
    (0, b"\xff\xf1", "aac"),
    (0, b"\xff\xf9", "aac"),
)
SNIFF_BYTES = 16


def sniff_audio(head: bytes) -> str | None:
    """The container a file's first bytes say it is, or None if they are not audio we decode."""
    for offset, magic, name in AUDIO_MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return name
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0 and head[1] & 0x06:
        return "mp3"  # an MPEG audio frame sync without an ID3 tag
    return None


@dataclass(frozen=True)
class Problem:
    """A path that cannot be ingested: a broken symlink, a loop, a directory named like audio..."""

    uri: str
    error_type: str
    message: str


@dataclass
class Discovery:
    files: list[FoundFile] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    skipped: list[tuple[FoundFile, str]] = field(default_factory=list)  # not audio: (file, reason)


def _walk_local(root: str, out: Discovery, exts: tuple[str, ...]) -> list[str]:
    """Regular files under `root`, following directory symlinks once each (a loop is reported,
    never followed twice). Whatever cannot be listed or stat'ed becomes a Problem."""
    files: list[str] = []
    seen: set[tuple[int, int]] = set()
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            st = os.stat(folder)
            if (st.st_dev, st.st_ino) in seen:
                out.problems.append(
                    Problem(
                        folder,
                        "SymlinkLoop",
                        f"{folder}: directory already visited through another path (symlink loop)",
                    )
                )
                continue
            seen.add((st.st_dev, st.st_ino))
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            out.problems.append(
                Problem(folder, type(exc).__name__, f"cannot list {folder}: {exc.strerror or exc}")
            )
            continue
        for entry in entries:
            path = entry.path
            try:
                st = os.stat(path)  # follows symlinks
            except FileNotFoundError:
                out.problems.append(
                    Problem(
                        path,
                        "BrokenSymlink",
                        f"{path}: symlink to {os.readlink(path) if entry.is_symlink() else '?'} which does not exist",
                    )
                )
                continue
            except OSError as exc:
                kind = "SymlinkLoop" if exc.errno == errno.ELOOP else type(exc).__name__
                out.problems.append(Problem(path, kind, f"{path}: {exc.strerror or exc}"))
                continue
            if stat.S_ISDIR(st.st_mode):
                if entry.name.lower().endswith(exts):
                    out.problems.append(
                        Problem(
                            path,
                            "IsADirectoryError",
                            f"{path} is a directory, not an audio file (its contents are ingested)",
                        )
                    )
                stack.append(path)
            elif stat.S_ISREG(st.st_mode):
                files.append(path)
            else:
                out.problems.append(
                    Problem(
                        path,
                        "NotARegularFile",
                        f"{path} is not a regular file (a pipe, socket or device)",
                    )
                )
    return files


def discover_all(sources: Sequence[str], extensions: Iterable[str] = AUDIO_EXTENSIONS) -> Discovery:
    """Files named by local paths, directories, globs or fsspec URLs. In directories and globs,
    files with an audio extension are taken; others are sniffed (their first bytes) and taken
    when they are audio, else recorded as skipped with the reason. A file named explicitly is
    always taken. Paths that cannot be read become problems (errors rows); the run goes on."""
    exts = tuple(e.lower() for e in extensions)
    out = Discovery()
    found: dict[str, FoundFile] = {}
    for source in sources:
        fs, path = fsspec.core.url_to_fs(source)
        local = isinstance(fs, fsspec.implementations.local.LocalFileSystem)
        explicit = False
        try:
            if GLOB_CHARS & set(path):
                paths = fs.glob(path)
            elif fs.isdir(path):
                paths = _walk_local(os.path.abspath(path), out, exts) if local else fs.find(path)
            elif fs.exists(path):
                paths, explicit = [path], True
            elif local and os.path.islink(path):
                out.problems.append(
                    Problem(
                        os.path.abspath(path),
                        "BrokenSymlink",
                        f"{path}: symlink to {os.readlink(path)} which does not exist",
                    )
                )
                continue
            else:
                out.missing.append(source)
                continue
        except OSError as exc:
            out.problems.append(Problem(source, type(exc).__name__, f"cannot list {source}: {exc}"))
            continue
        for p in paths:
            uri = os.path.abspath(p) if local else fs.unstrip_protocol(p)
            try:
                info = fs.info(p)
            except OSError as exc:
                kind = "BrokenSymlink" if isinstance(exc, FileNotFoundError) else type(exc).__name__
                out.problems.append(Problem(uri, kind, f"{uri}: {exc}"))
                continue
            if info.get("type") == "directory":
                if p.lower().endswith(exts):
                    out.problems.append(
                        Problem(
                            uri, "IsADirectoryError", f"{uri} is a directory, not an audio file"
                        )
                    )
                continue
            found_file = FoundFile(uri, int(info.get("size") or 0), _mtime(info))
            if explicit or p.lower().endswith(exts):
                found[uri] = found_file
                continue
            try:
                with fs.open(p, "rb") as fh:
                    head = fh.read(SNIFF_BYTES)
            except OSError as exc:
                out.problems.append(Problem(uri, type(exc).__name__, f"cannot read {uri}: {exc}"))
                continue
            if sniff_audio(head):
                found[uri] = found_file
            else:
                ext = os.path.splitext(p)[1]
                what = f"extension {ext!r} is not audio" if ext else "no extension"
                out.skipped.append(
                    (
                        found_file,
                        f"{what} and its first bytes are no audio container songmill decodes",
                    )
                )
    out.files = sorted(found.values(), key=lambda f: f.uri)
    return out


def discover(
    sources: Sequence[str], extensions: Iterable[str] = AUDIO_EXTENSIONS
) -> tuple[list[FoundFile], list[str]]:
    """(files to ingest, missing sources); see `discover_all` for what else is found."""
    found = discover_all(sources, extensions)
    return found.files, found.missing


def known_sources(corpus: Corpus) -> dict[str, tuple[int, float, str | None]]:
    rows = corpus.sql("SELECT uri, size_bytes, mtime, track_id FROM sources").to_pylist()
    return {r["uri"]: (r["size_bytes"], r["mtime"], r["track_id"]) for r in rows}


def known_track_ids(con: duckdb.DuckDBPyConnection, candidates: Sequence[str]) -> set[str]:
    """Which of `candidates` the corpus already holds (asked per batch: no corpus-wide set to ship)."""
    if not candidates:
        return set()
    rows = con.execute(
        "SELECT DISTINCT track_id FROM raw_tracks WHERE track_id IN (SELECT unnest(?::VARCHAR[]))",
        [sorted(set(candidates))],
    ).fetchall()
    return {r[0] for r in rows}


def _seen_in_run(con: duckdb.DuckDBPyConnection, run_id: str, uris: Sequence[str]) -> set[str]:
    """Files this run already recorded: a batch that runs again (its worker died) skips them."""
    rows = con.execute(
        "SELECT uri FROM raw_sources WHERE run_id = ? AND uri IN (SELECT unnest(?::VARCHAR[]))",
        [run_id, list(uris)],
    ).fetchall()
    return {r[0] for r in rows}


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


def ingest_batch(
    corpus: Corpus, files: Sequence[FoundFile], run_id: str, verify: str = "header"
) -> IngestSummary:
    """Hash and probe `files`; write their tracks, sources and errors rows (one part each).

    Content already in the corpus (or earlier in the batch) is a new path of a known track. Files
    whose `sources` row this run already wrote are skipped, so running a batch twice is harmless.
    """
    started = time.perf_counter()
    summary = IngestSummary(run_id)
    with corpus.connect() as con:  # one connection for both questions: opening it is the cost
        seen = _seen_in_run(con, run_id, [f.uri for f in files])
        files = [f for f in files if f.uri not in seen]
        hashed: list[tuple[FoundFile, bytes | None, str | None, BaseException | None]] = []
        for f in files:
            try:
                with fsspec.open(f.uri, "rb") as fh:
                    data = fh.read()
                hashed.append((f, data, hashlib.sha256(data).hexdigest(), None))
            except (OSError, ValueError, RuntimeError) as exc:
                hashed.append((f, None, None, exc))
        known = known_track_ids(con, [h[2] for h in hashed if h[2]])
    tracks, sources, errors = [], [], []
    for f, data, track_id, failure in hashed:
        now = utcnow()
        try:
            if failure is not None:
                raise failure
            if track_id in known:
                summary.new_uris += 1
            else:
                tracks.append(
                    stamp_row(
                        _track_row(track_id, f.uri, data, verify), run_id=run_id, created_at=now
                    )
                )
                known.add(track_id)
                summary.new_tracks += 1
                summary.audio_seconds += float(tracks[-1]["duration_s"] or 0.0)
            status = "ok"
        except (DecodeError, OSError, ValueError, RuntimeError) as exc:
            errors.append(
                error_row(
                    stage="ingest",
                    stage_version=INGEST_VERSION,
                    config_hash=verify,
                    track_id=track_id,
                    uri=f.uri,
                    exc=exc,
                    retryable=False,
                    run_id=run_id,
                    created_at=now,
                )
            )
            summary.errors += 1
            status = "error"
        sources.append(
            stamp_row(
                {
                    "uri": f.uri,
                    "size_bytes": f.size,
                    "mtime": f.mtime,
                    "track_id": track_id,
                    "status": status,
                },
                run_id=run_id,
                created_at=now,
            )
        )
    # tracks and errors before sources: `sources` marks a file as seen, so a kill before it only
    # means the file is looked at again next run (and then found to be a known track_id).
    corpus.write("tracks", tracks)
    corpus.write("errors", errors)
    corpus.write("sources", sources)
    summary.wall_s = time.perf_counter() - started
    return summary


def finish_ingest(
    corpus: Corpus,
    summary: IngestSummary | None = None,
    started_at: datetime | None = None,
    config_hash: str = "",
) -> None:
    """The run's `runs` row (stage `ingest`: files read, tracks + new paths ok, errors), then
    compaction where part files piled up."""
    if summary is not None and summary.to_read:
        corpus.write(
            "runs",
            [
                {
                    "run_id": summary.run_id,
                    "stage": "ingest",
                    "stage_version": INGEST_VERSION,
                    "config_hash": config_hash,
                    "n_input": summary.to_read,
                    "n_ok": summary.new_tracks + summary.new_uris,
                    "n_error": summary.errors,
                    "audio_seconds": summary.audio_seconds,
                    "wall_s": summary.wall_s,
                    "host": socket.gethostname(),
                    "started_at": started_at or utcnow(),
                    "finished_at": utcnow(),
                }
            ],
        )
    corpus.compact_if_needed(["tracks", "sources", "errors", "runs"])


def plan_ingest(
    corpus: Corpus, sources: Sequence[str], config: IngestConfig, run_id: str | None = None
) -> tuple[list[FoundFile], IngestSummary]:
    """Discover files and drop those unchanged since the last run (path + size + mtime)."""
    found = discover_all(sources, config.extensions)
    files = found.files
    known = known_sources(corpus)
    summary = IngestSummary(run_id or new_run_id(), found=len(files), missing_sources=found.missing)
    todo = []
    for f in files:
        seen = known.get(f.uri)
        if seen is not None and seen[0] == f.size and seen[1] == f.mtime:
            summary.unchanged += 1
        else:
            todo.append(f)
    summary.to_read = len(todo)
    record_discovery_problems(corpus, found, known, summary)
    return todo, summary


def record_discovery_problems(
    corpus: Corpus,
    found: Discovery,
    known: dict[str, tuple[int, float, str | None]],
    summary: IngestSummary,
) -> None:
    """One `errors` row per path that could not be looked at, and a `sources` row (status
    `skipped`, with the reason) per file that is not audio; unchanged skipped files are not
    recorded again."""
    now = utcnow()
    errors = [
        error_row(
            stage="ingest",
            stage_version=INGEST_VERSION,
            config_hash="discover",
            track_id=None,
            uri=p.uri,
            exc=_DiscoveryError(p.message),
            retryable=False,
            run_id=summary.run_id,
            created_at=now,
        )
        for p in found.problems
    ]
    for row, problem in zip(errors, found.problems, strict=True):
        row["error_type"] = problem.error_type
    skipped = []
    for f, reason in found.skipped:
        seen = known.get(f.uri)
        if seen is not None and seen[0] == f.size and seen[1] == f.mtime:
            continue
        skipped.append(
            stamp_row(
                {
                    "uri": f.uri,
                    "size_bytes": f.size,
                    "mtime": f.mtime,
                    "track_id": None,
                    "status": "skipped",
                    "reason": reason,
                },
                run_id=summary.run_id,
                created_at=now,
            )
        )
    corpus.write("errors", errors)
    corpus.write("sources", skipped)
    summary.errors += len(errors)
    summary.skipped += len(skipped)


class _DiscoveryError(OSError):
    """Carries a Problem's message into error_row (its error_type is set from the Problem)."""

    def __str__(self) -> str:
        return self.args[0]


def ingest_batches(files: Sequence[FoundFile], batch_size: int) -> list[list[FoundFile]]:
    """Batches of about `batch_size` files in which files of equal size stay together: identical
    content has identical size, so batches run in parallel never both claim the same new track."""
    by_size = sorted(files, key=lambda f: (f.size, f.uri))
    batches: list[list[FoundFile]] = []
    for f in by_size:
        if not batches or (
            len(batches[-1]) >= max(1, batch_size) and batches[-1][-1].size != f.size
        ):
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
    started_at = utcnow()
    todo, summary = plan_ingest(corpus, sources, config)
    done = 0
    for batch in ingest_batches(todo, config.batch_size):
        summary.add(ingest_batch(corpus, batch, summary.run_id, config.verify))
        done += len(batch)
        if on_batch is not None:
            on_batch(done, len(todo))
    finish_ingest(corpus, summary, started_at, config_hash(config))
    return summary
