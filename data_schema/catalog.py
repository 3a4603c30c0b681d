"""`<corpus>/songmill.duckdb`: every songmill view in a DuckDB file that plain DuckDB opens.

    duckdb corpus/songmill.duckdb -c "SELECT keyscale, count(*) FROM manifest GROUP BY ALL"

The views spell every file relative to the catalog's own folder: the macro `songmill_root()` is
the folder of the open database (DuckDB's default `temp_directory` is `<database file>.tmp`), or
the variable `songmill_root` when set (`SET VARIABLE songmill_root = '/mnt/corpus'`, for a
catalog ATTACHed to another database). So the catalog stays right when the corpus folder is moved
or mounted elsewhere. Snapshots and history files are named; the parts written since the last
compaction are read through a glob, so a write needs a rebuild only when a table gets its first
part (and compaction rebuilds it). Rebuilds are atomic (a new file renamed over the old one) and
serialised by a lock; `songmill.duckdb.json` records what the catalog was built from.
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
from songmill.data_schema.views import MACROS, TableFiles, ViewSql, all_view_sql, literal, quote


class Corpus(Protocol):
    """What the catalog needs of a corpus (data_schema.store.Corpus, which imports this module)."""

    path: str
    is_local: bool

    @property
    def catalog_path(self) -> str: ...

    def table_files(self, table: str) -> TableFiles: ...

ROOT_MACRO = "songmill_root"
STATE_SUFFIX = ".json"
LOCK_NAME = ".catalog.lock"
ROOT_SQL = (
    f"coalesce(getvariable('{ROOT_MACRO}'), "
    "regexp_replace(current_setting('temp_directory'), '[/\\\\][^/\\\\]*$', ''))"
)


def _relative(corpus: Corpus, url: str) -> str:
    rel = os.path.relpath(url, corpus.path).replace(os.sep, "/")
    return f"{ROOT_MACRO}() || {literal('/' + rel)}"


def catalog_views(corpus: Corpus, files: dict[str, TableFiles]) -> dict[str, str]:
    """The SQL of every view as the catalog spells it (paths relative to the catalog)."""

    def spell(_table: str, urls: tuple[str, ...]) -> str:
        return "[" + ", ".join(_relative(corpus, u) for u in urls) + "]"

    def parts_glob(table: str) -> str:
        return f"{ROOT_MACRO}() || {literal('/' + table + '/part-*.parquet')}"

    return all_view_sql(ViewSql(files, spell=spell, parts_glob=parts_glob))


def _state_path(corpus: Corpus) -> str:
    return corpus.catalog_path + STATE_SUFFIX


def read_state(corpus: Corpus) -> dict:
    try:
        with open(_state_path(corpus)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def catalog_has_parts(corpus: Corpus, table: str) -> bool:
    """Whether the catalog already reads `table`'s parts (so a new part needs no rebuild)."""
    state = read_state(corpus)
    return table in state.get("tables_with_parts", ()) and os.path.exists(corpus.catalog_path)


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
            views = catalog_views(corpus, files)
            try:
                _write(corpus, views)
                break
            except duckdb.IOException:  # a compaction removed a file between listing and binding
                if attempt == retries - 1:
                    raise
        state = {
            "schema_version": SCHEMA_VERSION,
            "signature": signature(views),
            "tables_with_parts": sorted(t for t, f in files.items() if f.parts),
        }
        tmp = os.path.join(corpus.path, f".tmp-{uuid.uuid4().hex}.json")
        with open(tmp, "w") as f:
            json.dump(state, f, indent=1)
        os.replace(tmp, _state_path(corpus))
    return corpus.catalog_path


def signature(views: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(views, sort_keys=True).encode()).hexdigest()[:16]


def _write(corpus: Corpus, views: dict[str, str]) -> None:
    # The temporary database sits in the corpus folder, so `songmill_root()` resolves to the
    # corpus while the views are bound here, exactly as it will for readers of the final file.
    tmp = os.path.join(corpus.path, f".tmp-{uuid.uuid4().hex}.duckdb")
    try:
        con = duckdb.connect(tmp)
        try:
            con.execute(f"CREATE MACRO {ROOT_MACRO}() AS {ROOT_SQL}")
            for name, sql in views.items():
                con.execute(f"CREATE VIEW {quote(name)} AS {sql}")
            for macro, body in MACROS.items():
                con.execute(f"CREATE MACRO {macro} AS {body}")
            con.execute("CHECKPOINT")
        finally:
            con.close()
        os.replace(tmp, corpus.catalog_path)
    finally:
        for debris in (tmp, tmp + ".wal"):
            if os.path.exists(debris):
                os.remove(debris)


def ensure_catalog(corpus: Corpus, files: dict[str, TableFiles]) -> None:
    """Rebuild the catalog when it is missing or was built from other files or views."""
    if not corpus.is_local:
        return
    state = read_state(corpus)
    if state.get("signature") != signature(catalog_views(corpus, files)) or not os.path.exists(corpus.catalog_path):
        write_catalog(corpus)
