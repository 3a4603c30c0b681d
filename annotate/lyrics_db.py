"""The canonical lyrics database: the `lyrics` table plus a persisted MinHash LSH index.

Adding lyrics phonemizes them (annotate/phonemes.py), computes their MinHash signatures in bulk
(annotate/minhash.py) and appends one Parquet part to `lyrics`. Parts are never rewritten, so
re-adding a lyric_id writes a newer row that wins in every read (`LATEST_LYRICS_SQL`); re-adding
identical content writes nothing.

The LSH index (datasketch `MinHashLSH` over `LeanMinHash`) is pickled under
`<corpus>/indexes/`, together with the names of the `lyrics` parts it has absorbed and the
creation time of each key it holds. Opening it applies only the parts written since: a new
lyric_id is inserted, a re-added one has its old key removed first. Two writers racing on the
snapshot cannot lose rows: whatever a snapshot lacks is applied again on the next open.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import pickle
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from songmill.annotate.minhash import DEFAULT_NUM_PERM, DEFAULT_SCHEME, DEFAULT_SEED, MinHasher
from songmill.annotate.phonemes import (
    PHONEMES_VERSION,
    normalise_language,
    phoneme_key,
    to_ipa_batch,
)
from songmill.data_schema.store import Corpus, new_run_id, utcnow
from songmill.data_schema.vocals import LATEST_LYRICS_SQL

INDEX_DIR = "indexes"
INDEX_FORMAT = 2  # bump when LyricsIndex's pickled shape changes: a new snapshot name, rebuilt
LYRICS_FIELDS = ("lyric_id", "title", "artist", "language", "lyrics")
_ROWS_PER_PART = 50_000


class LyricsFileError(ValueError):
    """A lyrics file that cannot be read as JSONL, CSV or Parquet with the expected columns."""


@dataclass(frozen=True)
class LyricsIndexParams:
    """What a signature and the LSH banding depend on. Changing any gives a different index."""

    num_perm: int = DEFAULT_NUM_PERM
    seed: int = DEFAULT_SEED
    scheme: str = DEFAULT_SCHEME
    shingle_size: int = (
        5  # IPA characters per shingle (about two phonemes: unrelated lyrics share few)
    )
    # LSH banding for this threshold (42 bands x 3 rows at 128 permutations) finds a lyric at
    # estimated Jaccard 0.4 with p = 0.94 and 0.5 with p = 0.996, and lets through ~1 % of
    # lyrics at 0.06: transcripts with errors, or of part of a song, sit around 0.35 - 0.9.
    lsh_threshold: float = 0.25

    @property
    def key(self) -> str:
        blob = json.dumps(
            asdict(self) | {"phonemes": PHONEMES_VERSION, "format": INDEX_FORMAT}, sort_keys=True
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def hasher(self) -> MinHasher:
        return MinHasher(self.num_perm, self.seed, self.scheme)


@dataclass
class AddSummary:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    invalid: list[str] = field(default_factory=list)
    part: str | None = None


def read_lyrics_file(path: str) -> list[dict[str, Any]]:
    """Records from a JSONL, CSV or Parquet file with lyric_id and lyrics (title, artist and
    language optional); other columns are ignored."""
    import fsspec

    lower = path.lower()
    with fsspec.open(path, "rb") as f:
        data = f.read()
    if lower.endswith(".parquet") or data[:4] == b"PAR1":
        records = pq.read_table(io.BytesIO(data)).to_pylist()
    elif lower.endswith((".jsonl", ".ndjson", ".json")):
        records = []
        for n, line in enumerate(data.decode("utf-8-sig").splitlines(), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise LyricsFileError(f"{path}:{n}: not a JSON object: {exc}") from None
    elif lower.endswith((".csv", ".tsv")):
        dialect = "excel-tab" if lower.endswith(".tsv") else "excel"
        records = list(csv.DictReader(io.StringIO(data.decode("utf-8-sig")), dialect=dialect))
    else:
        raise LyricsFileError(f"{path}: expected a .jsonl, .csv or .parquet file")
    if records and not all(isinstance(r, dict) for r in records):
        raise LyricsFileError(f"{path}: every record must be an object with lyric_id and lyrics")
    missing = (
        {"lyric_id", "lyrics"} - set().union(*(r.keys() for r in records)) if records else set()
    )
    if missing:
        raise LyricsFileError(
            f"{path}: missing column(s) {sorted(missing)}; expected {', '.join(LYRICS_FIELDS)}"
        )
    return records


def _content_sha(record: Mapping[str, Any]) -> str:
    blob = json.dumps([record.get(k) for k in LYRICS_FIELDS], ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def _signature_bytes(signature: np.ndarray) -> bytes:
    return signature.astype("<u4").tobytes()


def signatures_from_bytes(blobs: Sequence[bytes], num_perm: int) -> np.ndarray:
    if not blobs:
        return np.zeros((0, num_perm), np.uint32)
    return (
        np.frombuffer(b"".join(blobs), dtype="<u4").reshape(len(blobs), num_perm).astype(np.uint32)
    )


class LyricsIndex:
    """A MinHashLSH over the lyrics, plus what it has absorbed (for incremental updates)."""

    def __init__(self, params: LyricsIndexParams):
        from datasketch import MinHashLSH

        self.params = params
        self.lsh = MinHashLSH(threshold=params.lsh_threshold, num_perm=params.num_perm)
        self.parts: set[str] = set()
        self.created: dict[str, datetime] = {}  # lyric_id -> created_at of the indexed row
        # Every indexed signature, to rank LSH candidates by estimated Jaccard without a read.
        self.position: dict[str, int] = {}
        self._signatures = np.zeros((0, params.num_perm), np.uint32)

    def __len__(self) -> int:
        return len(self.created)

    def signatures_of(self, lyric_ids: Sequence[str]) -> np.ndarray:
        return self._signatures[[self.position[i] for i in lyric_ids]]

    def nearest(self, signature: np.ndarray, k: int) -> list[tuple[str, float]]:
        """The k lyrics with the highest estimated Jaccard, by exhaustive scan (no LSH)."""
        n = len(self.position)
        if n == 0:
            return []
        estimates = (self._signatures[:n] == signature[None, :]).mean(axis=1)
        top = np.argpartition(-estimates, min(k, n) - 1)[:k]
        top = top[np.argsort(-estimates[top], kind="stable")]
        ids = list(self.position)  # insertion order = position order
        return [(ids[j], float(estimates[j])) for j in top]

    def _store(self, lyric_ids: list[str], signatures: np.ndarray) -> None:
        new = [i for i in lyric_ids if i not in self.position]
        used = len(self.position)
        if used + len(new) > self._signatures.shape[0]:  # grow by doubling
            grown = np.zeros(
                (max(2 * self._signatures.shape[0], used + len(new), 1024), self.params.num_perm),
                np.uint32,
            )
            grown[:used] = self._signatures[:used]
            self._signatures = grown
        for lyric_id in new:
            self.position[lyric_id] = len(self.position)
        self._signatures[[self.position[i] for i in lyric_ids]] = signatures

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256("\n".join(sorted(self.parts)).encode()).hexdigest()[:16]

    def apply(self, rows: pa.Table) -> int:
        """Insert the rows' keys, replacing older rows of the same lyric_id; returns changes."""
        if rows.num_rows == 0:
            return 0
        order = np.argsort(np.asarray(rows.column("created_at").cast(pa.int64())), kind="stable")
        rows = rows.take(order)
        ids = rows.column("lyric_id").to_pylist()
        created = rows.column("created_at").to_pylist()
        newest: dict[str, int] = {}
        for i, (lyric_id, at) in enumerate(zip(ids, created, strict=True)):
            known = self.created.get(lyric_id)
            if known is None or at >= known:
                newest[lyric_id] = i
        if not newest:
            return 0
        take = sorted(newest.values())
        signatures = self._row_signatures(rows.take(take))
        hasher = self.params.hasher()
        for row_index, signature in zip(take, signatures, strict=True):
            lyric_id = ids[row_index]
            if lyric_id in self.created:
                self.lsh.remove(lyric_id)
            self.lsh.insert(lyric_id, hasher.lean(signature), check_duplication=False)
            self.created[lyric_id] = created[row_index]
        self._store([ids[i] for i in take], signatures)
        return len(take)

    def _row_signatures(self, rows: pa.Table) -> np.ndarray:
        """Stored signatures where they were made with these parameters, recomputed otherwise."""
        p = self.params
        stored = rows.select(
            ["signature", "num_perm", "seed", "scheme", "shingle_size", "phonemes_version"]
        ).to_pylist()
        usable = [
            r["signature"] is not None
            and (r["num_perm"], r["seed"], r["scheme"], r["shingle_size"], r["phonemes_version"])
            == (p.num_perm, p.seed, p.scheme, p.shingle_size, PHONEMES_VERSION)
            for r in stored
        ]
        out = np.empty((rows.num_rows, p.num_perm), np.uint32)
        good = [i for i, ok in enumerate(usable) if ok]
        out[good] = signatures_from_bytes([stored[i]["signature"] for i in good], p.num_perm)
        stale = [i for i, ok in enumerate(usable) if not ok]
        if stale:
            stale_rows = rows.take(stale)
            ipa = _ipa_for(stale_rows.to_pylist())
            out[stale] = p.hasher().signatures([phoneme_key(s) for s in ipa], p.shingle_size)
        return out

    def query(self, signature: np.ndarray) -> list[str]:
        return self.lsh.query(self.params.hasher().lean(signature))


def _ipa_for(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """IPA of each record, phonemized in one batch per language (current phonemes version)."""
    out = [""] * len(records)
    by_language: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        if r.get("ipa") is not None and r.get("phonemes_version") == PHONEMES_VERSION:
            out[i] = r["ipa"]
        else:
            by_language.setdefault(normalise_language(r.get("language")), []).append(i)
    for language, indices in by_language.items():
        for i, ipa in zip(
            indices,
            to_ipa_batch([records[i]["lyrics"] or "" for i in indices], language),
            strict=True,
        ):
            out[i] = ipa
    return out


class LyricsDB:
    """The `lyrics` table of one corpus and its LSH index."""

    def __init__(self, corpus: Corpus, params: LyricsIndexParams | None = None):
        self.corpus = corpus
        self.params = params or LyricsIndexParams()

    # -- reads ----------------------------------------------------------------------------------
    def latest(
        self, columns: str = "*", where: str | None = None, params: list[Any] | None = None
    ) -> pa.Table:
        sql = f"SELECT {columns} FROM ({LATEST_LYRICS_SQL}) l"
        return self.corpus.sql(sql + (f" WHERE {where}" if where else ""), params)

    def get(self, lyric_ids: Sequence[str], columns: str = "*") -> dict[str, dict[str, Any]]:
        """The newest row of each of these lyric_ids (filtered before ranking: cheap at scale)."""
        if not lyric_ids:
            return {}
        rows = self.corpus.sql(
            f"""SELECT {columns} FROM raw_lyrics WHERE lyric_id IN (SELECT unnest(?::VARCHAR[]))
                QUALIFY row_number() OVER (PARTITION BY lyric_id ORDER BY created_at DESC) = 1""",
            [sorted(set(lyric_ids))],
        )
        return {r["lyric_id"]: r for r in rows.to_pylist()}

    def count(self) -> int:
        return int(
            self.corpus.sql(f"SELECT count(*) AS n FROM ({LATEST_LYRICS_SQL})")
            .column("n")[0]
            .as_py()
        )

    # -- writes ---------------------------------------------------------------------------------
    def add(
        self,
        records: Iterable[Mapping[str, Any]],
        source: str | None = None,
        run_id: str | None = None,
    ) -> AddSummary:
        """Add or update lyrics; identical re-adds are skipped. Updates the LSH index."""
        summary = AddSummary()
        wanted: dict[str, dict[str, Any]] = {}
        for n, record in enumerate(records, 1):
            lyric_id = str(record.get("lyric_id") or "").strip()
            text = record.get("lyrics")
            if not lyric_id or not isinstance(text, str) or not text.strip():
                summary.invalid.append(f"record {n}: needs a lyric_id and non-empty lyrics")
                continue
            clean = {
                k: (None if record.get(k) in (None, "") else str(record.get(k)))
                for k in LYRICS_FIELDS
            }
            clean["lyric_id"] = lyric_id
            clean["language"] = normalise_language(clean["language"])
            wanted[lyric_id] = clean  # the last record of an id in a file wins
        known = (
            self.get(list(wanted), "lyric_id, content_sha256, phonemes_version") if wanted else {}
        )
        todo = []
        for lyric_id, record in wanted.items():
            record["content_sha256"] = _content_sha(record)
            old = known.get(lyric_id)
            if (
                old
                and old["content_sha256"] == record["content_sha256"]
                and old["phonemes_version"] == PHONEMES_VERSION
            ):
                summary.unchanged += 1
                continue
            summary.updated += old is not None
            summary.added += old is None
            todo.append(record)
        if todo:
            p = self.params
            ipa = _ipa_for(todo)
            signatures = p.hasher().signatures([phoneme_key(s) for s in ipa], p.shingle_size)
            run_id = run_id or new_run_id()
            now = utcnow()
            rows = [
                record
                | {
                    "ipa": ipa[i],
                    "phonemes_version": PHONEMES_VERSION,
                    "signature": _signature_bytes(signatures[i]),
                    "num_perm": p.num_perm,
                    "seed": p.seed,
                    "scheme": p.scheme,
                    "shingle_size": p.shingle_size,
                    "source": source,
                    "run_id": run_id,
                    "created_at": now,
                }
                for i, record in enumerate(todo)
            ]
            for start in range(0, len(rows), _ROWS_PER_PART):
                summary.part = self.corpus.write("lyrics", rows[start : start + _ROWS_PER_PART])
        self.index()  # absorb the new part(s) into the persisted index now
        return summary

    # -- index ----------------------------------------------------------------------------------
    @property
    def index_relpath(self) -> str:
        return f"{INDEX_DIR}/lyrics-lsh-{self.params.key}.pkl"

    def _load_snapshot(self) -> LyricsIndex | None:
        path = self.corpus.table_dir(INDEX_DIR) + "/" + self.index_relpath.rsplit("/", 1)[1]
        if not self.corpus.fs.exists(path):
            return None
        try:
            with self.corpus.fs.open(path, "rb") as f:
                index = pickle.load(f)
        except Exception:  # unreadable (older datasketch, truncated by a full disk): rebuild
            return None
        return index if isinstance(index, LyricsIndex) and index.params == self.params else None

    def index(self) -> LyricsIndex:
        """The LSH index, brought up to date with every `lyrics` part and saved if it changed."""
        parts = {os.path.basename(p): p for p in self.corpus.part_files("lyrics")}
        index = self._load_snapshot()
        if index is None or not index.parts <= parts.keys():  # parts vanished: start over
            index = LyricsIndex(self.params)
        new_parts = sorted(parts.keys() - index.parts)
        if not new_parts:
            return index
        columns = [
            "lyric_id",
            "lyrics",
            "language",
            "ipa",
            "phonemes_version",
            "signature",
            "num_perm",
            "seed",
            "scheme",
            "shingle_size",
            "created_at",
        ]
        tables = []
        for name in new_parts:
            with self.corpus.fs.open(parts[name], "rb") as f:
                tables.append(pq.read_table(f, columns=columns))
        index.apply(pa.concat_tables(tables, promote_options="permissive"))
        index.parts.update(new_parts)
        self.corpus.write_bytes(
            self.index_relpath, pickle.dumps(index, protocol=pickle.HIGHEST_PROTOCOL)
        )
        return index
