"""`<corpus>/songmill.duckdb`: every songmill view in a DuckDB file that plain DuckDB opens.

    duckdb corpus/songmill.duckdb -c "SELECT keyscale, count(*) FROM manifest GROUP BY ALL"

The views spell every file relative to the catalog's own folder: the macro `songmill_root()` is
the folder of the open database (DuckDB's default `temp_directory` is `<database file>.tmp`), or
the variable `songmill_root` when set (`SET VARIABLE songmill_root = '/mnt/corpus'`, for a
catalog ATTACHed to another database). So the catalog stays right when the corpus folder is moved
or mounted elsewhere. Snapshots and history files are named; the parts written since the last
compaction are read through a glob, so a write needs a rebuild only when a table gets its first
part (and compaction rebuilds it). Rebuilds are atomic (a new file renamed over the old one) and
serialised by a lock; `songmill.duckdb.json` records what the catalog was built from (the file
names of every table, the manifest snapshot, a signature of the view definitions), so songmill
itself checks it with a directory listing and opens it instead of building views per call.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from typing import Protocol

import duckdb
from songmill.data_schema.tables import SCHEMA_VERSION, TABLES
from songmill.data_schema.views import (
    DERIVED_VIEWS,
    MACROS,
    MANIFEST_EXCLUDED_TABLES,
    MANIFEST_JOINS,
    VIEWS_VERSION,
    ManifestDelta,
    TableFiles,
    ViewSql,
    all_view_sql,
    literal,
    quote,
)


class Corpus(Protocol):
    """What the catalog needs of a corpus (data_schema.store.Corpus, which imports this module)."""

    path: str
    is_local: bool

    @property
    def catalog_path(self) -> str: ...

    def table_files(self, table: str) -> TableFiles: ...

    def manifest_base(
        self, files: dict[str, TableFiles] | None = None
    ) -> tuple[str, ManifestDelta | None] | None: ...


ROOT_MACRO = "songmill_root"
CATALOG_ALIAS = "songmill"
STATE_SUFFIX = ".json"
LOCK_NAME = ".catalog.lock"
ROOT_SQL = (
    f"coalesce(getvariable('{ROOT_MACRO}'), "
    "regexp_replace(current_setting('temp_directory'), '[/\\\\][^/\\\\]*$', ''))"
)


def _relative(corpus: Corpus, url: str) -> str:
    rel = os.path.relpath(url, corpus.path).replace(os.sep, "/")
    return f"{ROOT_MACRO}() || {literal('/' + rel)}"


# Bump when the catalog's layout changes (how it spells files, its state file, its storage).
CATALOG_FORMAT = 4
# The DuckDB storage format of the catalog file: one that DuckDB 1.4 (LTS) and later, and PyPI's
# duckdb-cli shell, open.
CATALOG_STORAGE_VERSION = "v1.4.0"


def catalog_views(
    corpus: Corpus,
    files: dict[str, TableFiles],
    manifest_snapshot: str | None = None,
    manifest_delta: ManifestDelta | None = None,
) -> dict[str, str]:
    """The SQL of every view as the catalog spells it (paths relative to the catalog)."""

    def spell(_table: str, urls: tuple[str, ...]) -> str:
        return "[" + ", ".join(_relative(corpus, u) for u in urls) + "]"

    def parts_glob(table: str) -> str:
        return f"{ROOT_MACRO}() || {literal('/' + table + '/part-*.parquet')}"

    return all_view_sql(
        ViewSql(
            files,
            spell=spell,
            parts_glob=parts_glob,
            manifest_snapshot=manifest_snapshot,
            manifest_delta=manifest_delta,
        )
    )


def code_signature() -> str:
    """What the views are made of besides the files: every table's schema and rule, the
    manifest joins, derived views and macros (another songmill, or other tables registered)."""
    parts = [f"{CATALOG_FORMAT}/{VIEWS_VERSION}/{SCHEMA_VERSION}"]
    parts += [f"{n}:{s.schema}:{s.key}:{s.stage_table}" for n, s in TABLES.items()]
    parts += [f"{j.name}:{j.sql}:{j.columns}" for j in MANIFEST_JOINS.values()]
    parts += [f"{k}:{v}" for k, v in sorted(DERIVED_VIEWS.items())] + [
        f"{k}:{v}" for k, v in MACROS.items()
    ]
    parts += sorted(MANIFEST_EXCLUDED_TABLES)
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def files_state(
    files: dict[str, TableFiles],
    manifest_snapshot: str | None,
    manifest_delta: ManifestDelta | None = None,
) -> dict:
    """What a catalog built from these files depends on: names, not contents (files are
    immutable once renamed into place), and only whether a table has parts (read by a glob)."""
    name = os.path.basename
    covered = manifest_delta.covered if manifest_delta else {}
    return {
        "code": code_signature(),
        "tables": {  # table -> [snapshot, history, has parts, has parts the manifest delta does not cover]
            t: [
                name(f.snapshot) if f.snapshot else None,
                [name(h) for h in f.history],
                bool(f.parts),
                any(name(p) not in covered.get(t, ()) for p in f.parts),
            ]
            for t, f in files.items()
            if f.snapshot or f.history or f.parts
        },
        "manifest_snapshot": name(manifest_snapshot) if manifest_snapshot else None,
        "manifest_delta": name(manifest_delta.path) if manifest_delta else None,
    }


def _state_path(corpus: Corpus) -> str:
    return corpus.catalog_path + STATE_SUFFIX


def read_state(corpus: Corpus) -> dict:
    try:
        with open(_state_path(corpus)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def catalog_has_parts(corpus: Corpus, table: str) -> bool:
    """Whether the catalog already reads `table`'s new parts through its glob (so another part
    needs no rebuild); parts the manifest delta covers do not count."""
    tables = read_state(corpus).get("files", {}).get("tables", {})  # see files_state
    return (
        table in tables
        and len(tables[table]) > 3
        and bool(tables[table][3])
        and os.path.exists(corpus.catalog_path)
    )


@contextlib.contextmanager
def _lock(corpus: Corpus) -> Iterator[None]:
    with open(os.path.join(corpus.path, LOCK_NAME), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def write_catalog(corpus: Corpus, retries: int = 3) -> str:
    """Rebuild the catalog from the files present now; returns its path."""
    with _lock(corpus):
        for attempt in range(retries):
            files = {name: corpus.table_files(name) for name in TABLES}
            snapshot, delta = corpus.manifest_base(files) or (None, None)
            views = catalog_views(corpus, files, snapshot, delta)
            try:
                _write(corpus, views)
                break
            except duckdb.IOException:  # a compaction removed a file between listing and binding
                if attempt == retries - 1:
                    raise
        state = {"schema_version": SCHEMA_VERSION, "files": files_state(files, snapshot, delta)}
        tmp = os.path.join(corpus.path, f".tmp-{uuid.uuid4().hex}.json")
        with open(tmp, "w") as f:
            json.dump(state, f, indent=1)
        os.replace(tmp, _state_path(corpus))
    return corpus.catalog_path


def _write(corpus: Corpus, views: dict[str, str]) -> None:
    # Written in an older storage format (views and macros only, so nothing is lost) that the
    # DuckDB shells people install can open: PyPI's duckdb-cli 1.5 reads storage versions up to
    # 1.5, not the 2.0 format this duckdb writes by default.
    # The temporary database sits in the corpus folder, and `songmill_root` is set to it while
    # the views are bound, exactly as it will resolve for readers of the final file.
    tmp = os.path.join(corpus.path, f".tmp-{uuid.uuid4().hex}.duckdb")
    try:
        con = duckdb.connect(":memory:")
        try:
            con.execute(f"SET VARIABLE {ROOT_MACRO} = {literal(corpus.path)}")
            try:
                con.execute(
                    f"ATTACH {literal(tmp)} AS {CATALOG_ALIAS} (STORAGE_VERSION {literal(CATALOG_STORAGE_VERSION)})"
                )
            except duckdb.Error:  # a duckdb older than that format writes its own, readable anyway
                con.execute(f"ATTACH {literal(tmp)} AS {CATALOG_ALIAS}")
            con.execute(f"USE {CATALOG_ALIAS}")
            con.execute("BEGIN")  # one transaction: a commit (and fsync) per view costs 10x more
            con.execute(f"CREATE MACRO {ROOT_MACRO}() AS {ROOT_SQL}")
            for name, sql in views.items():
                con.execute(f"CREATE VIEW {quote(name)} AS {sql}")
            for macro, body in MACROS.items():
                con.execute(f"CREATE MACRO {macro} AS {body}")
            con.execute("COMMIT")
            con.execute(f"CHECKPOINT {CATALOG_ALIAS}")
            con.execute("USE memory")
            con.execute(f"DETACH {CATALOG_ALIAS}")
        finally:
            con.close()
        os.replace(tmp, corpus.catalog_path)
    finally:
        for debris in (tmp, tmp + ".wal"):
            if os.path.exists(debris):
                os.remove(debris)


def ensure_catalog(corpus: Corpus) -> str:
    """The catalog's path, rebuilt first when it is missing or was built from other files or
    other view definitions (checked by listing the table folders: no view is built)."""
    files = {name: corpus.table_files(name) for name in TABLES}
    state = read_state(corpus)
    if state.get("files") != files_state(
        files, *(corpus.manifest_base(files) or (None, None))
    ) or not os.path.exists(corpus.catalog_path):
        write_catalog(corpus)
    return corpus.catalog_path


def open_catalog(corpus: Corpus) -> duckdb.DuckDBPyConnection:
    """A fresh in-memory connection with the catalog ATTACHed read-only as the default database
    (not a connection to the file itself: DuckDB caches open databases per path in a process,
    so a file replaced by a rebuild could be served from the old instance)."""
    path = ensure_catalog(corpus)
    con = duckdb.connect(":memory:")
    try:
        con.execute(f"SET VARIABLE {ROOT_MACRO} = {literal(corpus.path)}")
        con.execute(f"ATTACH {literal(path)} AS {CATALOG_ALIAS} (READ_ONLY)")
        con.execute(f"USE {CATALOG_ALIAS}")
    except BaseException:
        con.close()
        raise
    return con
