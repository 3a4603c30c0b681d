"""DuckDB views over the corpus tables.

Each table folder holds three kinds of Parquet files (see store.py):
- `part-*.parquet`: rows appended since the last compaction (one file per write);
- `history-*.parquet`: earlier parts, merged by compaction (the full history stays queryable);
- `current-*.parquet`: the deduplicated "current" rows as of the last compaction, sorted by key.

For every table `t` there is `raw_t` (every row ever written: history + parts) and `t` (what users
mean): the snapshot, with the rows of the parts written since merged in at query time (only the
keys those parts touch are re-resolved, so a query costs a scan of the snapshot, not a window
function over the whole history). "Current" per table:
- stage tables: the latest result per track, by stage version then time;
- `tracks`: one row per track_id (the first seen), with `uris`, every path it was seen under;
- keyed catalogs (`sources` by path, `lyrics` by lyric_id): the newest row per key;
- `errors`: one row per distinct failure (re-runs of a retryable failure do not repeat it);
- `runs`: every row;
- `manifest`: one row per track, the latest result of every stage joined on `track_id`: read
  from the manifest snapshot (written when tables are compacted) and the manifest delta (the
  tracks that parts written since touch, re-joined at the end of a run), joining at query time
  only the tracks that newer parts touch.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import duckdb
import pyarrow as pa
from songmill.data_schema.tables import STAGE_KEY_FIELDS, TABLES, TableSpec


@dataclass(frozen=True)
class TableFiles:
    """The files of one table at one moment (URLs as DuckDB should read them)."""

    snapshot: str | None = None
    history: tuple[str, ...] = ()
    parts: tuple[str, ...] = ()

    @property
    def raw(self) -> tuple[str, ...]:
        return self.history + self.parts


@dataclass(frozen=True)
class ManifestDelta:
    """Manifest rows re-joined for the tracks that some parts touch, on top of a manifest
    snapshot: between compactions the manifest stays two file reads and a small join."""

    path: str
    covered: dict[str, frozenset[str]] = field(default_factory=dict)  # table -> part file names


class CorpusFiles(Protocol):
    """What the views need of a corpus (data_schema.store.Corpus): each table's files."""

    def table_files(self, table: str) -> TableFiles: ...


STAGE_KEY_COLUMNS = [f.name for f in STAGE_KEY_FIELDS]


@dataclass(frozen=True)
class ManifestJoin:
    """Extra columns for the manifest: `sql` selects `track_id` plus the named columns."""

    name: str
    sql: str
    columns: tuple[str, ...]


MANIFEST_JOINS: dict[str, ManifestJoin] = {}
# Stage tables whose columns stay out of the manifest (large lists, or joined another way).
MANIFEST_EXCLUDED_TABLES: set[str] = set()
# Views defined on top of the table views (near_duplicates...): name -> SELECT over other views.
DERIVED_VIEWS: dict[str, str] = {}


def register_manifest_join(name: str, sql: str, columns: tuple[str, ...]) -> None:
    MANIFEST_JOINS[name] = ManifestJoin(name, sql, columns)


def register_view(name: str, sql: str) -> None:
    """A view over other views, created before `manifest` (which may join it)."""
    DERIVED_VIEWS[name] = sql


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@dataclass(frozen=True)
class DedupRule:
    """How the current row of a key is chosen: partition expressions and the winning order."""

    partition: tuple[str, ...]
    order: str


def dedup_rule(spec: TableSpec) -> DedupRule | None:
    """None: every row is current (runs)."""
    if spec.stage_table:
        return DedupRule(("track_id",), "stage_version DESC, created_at DESC, run_id DESC")
    if spec.name == "tracks":  # the first sighting of a content hash defines the track
        return DedupRule(("track_id",), "created_at ASC, uri ASC")
    if spec.name == "errors":
        return DedupRule(
            ("coalesce(track_id, uri)", "stage", "stage_version", "config_hash", "error_type"),
            "created_at DESC, run_id DESC",
        )
    if spec.key:
        return DedupRule(tuple(quote(k) for k in spec.key), "created_at DESC")
    return None


_FILE_COLUMNS: dict[str, frozenset[str]] = {}


def files_columns(urls: tuple[str, ...]) -> frozenset[str]:
    """The union of the column names of Parquet files (footers read once per process: corpus
    files are immutable once renamed into place)."""
    names: set[str] = set()
    for url in urls:
        if url not in _FILE_COLUMNS:
            import fsspec
            import pyarrow.parquet as pq

            fs, path = fsspec.core.url_to_fs(url)
            with fs.open(path, "rb") as f:
                _FILE_COLUMNS[url] = frozenset(pq.read_schema(f).names)
        names |= _FILE_COLUMNS[url]
    return frozenset(names)


_TYPE_NAMES: dict[str, dict[str, str]] = {}

_SIMPLE_TYPES = {
    pa.string(): "VARCHAR",
    pa.large_string(): "VARCHAR",
    pa.bool_(): "BOOLEAN",
    pa.int8(): "TINYINT",
    pa.int16(): "SMALLINT",
    pa.int32(): "INTEGER",
    pa.int64(): "BIGINT",
    pa.uint8(): "UTINYINT",
    pa.uint16(): "USMALLINT",
    pa.uint32(): "UINTEGER",
    pa.uint64(): "UBIGINT",
    pa.float32(): "FLOAT",
    pa.float64(): "DOUBLE",
    pa.binary(): "BLOB",
    pa.large_binary(): "BLOB",
    pa.date32(): "DATE",
}


def duckdb_type(t: pa.DataType) -> str | None:
    """DuckDB's name for an Arrow type (None: not one songmill's schemas use)."""
    if t in _SIMPLE_TYPES:
        return _SIMPLE_TYPES[t]
    if pa.types.is_timestamp(t):
        if t.tz is not None:
            return "TIMESTAMP WITH TIME ZONE" if t.unit == "us" else None
        return {"s": "TIMESTAMP_S", "ms": "TIMESTAMP_MS", "us": "TIMESTAMP", "ns": "TIMESTAMP_NS"}[
            t.unit
        ]
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        inner = duckdb_type(t.value_type)
        return None if inner is None else f"{inner}[]"
    if pa.types.is_struct(t):
        fields = [(t.field(i).name, duckdb_type(t.field(i).type)) for i in range(t.num_fields)]
        if any(ft is None for _, ft in fields):
            return None
        return "STRUCT(" + ", ".join(f"{quote(n)} {ft}" for n, ft in fields) + ")"
    return None


def duckdb_types(spec: TableSpec) -> dict[str, str]:
    """Column -> DuckDB type name of a table's Arrow schema (cached). Spelled from the Arrow
    types directly: asking DuckDB (registering an empty Arrow table) imports pandas, half a
    second of every CLI call."""
    key = f"{spec.name}:{spec.schema}"
    if key not in _TYPE_NAMES:
        names = {f.name: duckdb_type(f.type) for f in spec.schema}
        if any(v is None for v in names.values()):
            names = _types_from_duckdb(spec)
        _TYPE_NAMES[key] = names  # type: ignore[assignment]
    return _TYPE_NAMES[key]


def _types_from_duckdb(spec: TableSpec) -> dict[str, str]:
    con = _types_connection()
    con.register("empty", pa.table({f.name: pa.array([], f.type) for f in spec.schema}))
    try:
        return {row[0]: row[1] for row in con.execute("DESCRIBE empty").fetchall()}
    finally:
        con.unregister("empty")


_TYPES_CON: list[duckdb.DuckDBPyConnection] = []


def _types_connection() -> duckdb.DuckDBPyConnection:
    if not _TYPES_CON:
        _TYPES_CON.append(duckdb.connect(":memory:"))
    return _TYPES_CON[0]


def empty_select(spec: TableSpec) -> str:
    """A zero-row SELECT with the table's columns and types (usable in a persistent catalog)."""
    cols = ", ".join(f"NULL::{t} AS {quote(n)}" for n, t in duckdb_types(spec).items())
    return f"SELECT {cols} WHERE false"


# How a list of files is spelled in SQL: an in-memory connection lists literal URLs; the catalog
# file spells them relative to its own folder (catalog.py).
FileList = Callable[[str, tuple[str, ...]], str]


def literal_files(_table: str, urls: tuple[str, ...]) -> str:
    return "[" + ", ".join(literal(u) for u in urls) + "]"


@dataclass
class ViewSql:
    """The SQL of every view, for one set of table files."""

    files: dict[str, TableFiles]
    spell: FileList = literal_files
    # For the catalog: a glob standing for "whatever parts exist now" instead of a fixed list.
    parts_glob: Callable[[str], str] | None = None
    # Reproducing an old manifest: table -> timestamp; rows written after it are left out, and
    # "current" is resolved over what remains (window functions over the raw rows: slow, exact).
    as_of: dict[str, str] | None = None
    # A manifest snapshot built from exactly these tables' snapshots and history (checked by the
    # caller: `manifest_snapshot_valid`): the manifest is then that file, with only the tracks
    # that newer parts touch joined again.
    manifest_snapshot: str | None = None
    # On top of the snapshot: the rows of the tracks that the parts it covers touch (checked by
    # the caller too); only parts it does not cover are joined again.
    manifest_delta: ManifestDelta | None = None

    def _read(self, table: str, urls: tuple[str, ...]) -> str:
        spec = TABLES[table]
        source = f"read_parquet({self.spell(table, urls)}, union_by_name = true)"
        missing = [f.name for f in spec.schema if f.name not in files_columns(urls)]
        if not missing:  # the common case: a plain scan keeps projection pushdown
            return f"SELECT * FROM {source}"
        # Columns added to the schema after these files were written read as NULL.
        types = duckdb_types(spec)
        nulls = ", ".join(f"NULL::{types[c]} AS {quote(c)}" for c in missing)
        return f"SELECT *, {nulls} FROM {source}"

    def _parts(self, table: str) -> str | None:
        files = self.files[table]
        if self.parts_glob is not None and files.parts:
            spec = TABLES[table]
            source = f"SELECT * FROM read_parquet({self.parts_glob(table)}, union_by_name = true)"
            if all(f.name in files_columns(files.parts) for f in spec.schema):
                return source
            # the glob also reads parts written later (with the new columns): a by-name union
            # with an empty typed select is right either way
            return f"{source} UNION ALL BY NAME {empty_select(spec)}"
        return self._read(table, files.parts) if files.parts else None

    def raw(self, table: str) -> str:
        sql = self._raw(table)
        if self.as_of and table in self.as_of:
            column = time_column(TABLES[table])
            if column:
                sql = f"SELECT * FROM ({sql}) WHERE {quote(column)} <= {literal(self.as_of[table])}::TIMESTAMPTZ"
        return sql

    def _raw(self, table: str) -> str:
        files = self.files[table]
        pieces = [self._read(table, files.history)] if files.history else []
        parts = self._parts(table)
        if parts:
            pieces.append(parts)
        if not pieces:
            return empty_select(TABLES[table])
        return " UNION ALL BY NAME ".join(f"({p})" for p in pieces)

    def current(self, table: str) -> str:
        """The current rows of a table: snapshot + parts written since, resolved per key."""
        spec = TABLES[table]
        files = self.files[table]
        rule = dedup_rule(spec)
        if rule is None:
            return self.raw(table)
        if self.as_of is not None:
            return current_sql(rule, None, self.raw(table), empty_select(spec))
        snapshot = self._read(table, (files.snapshot,)) if files.snapshot else None
        delta = self._parts(table)
        return current_sql(rule, snapshot, delta, empty_select(spec))

    def current_for(self, table: str, keys: str) -> str:
        """`current(table)` for only the tracks in `keys` (a relation with `track_id`), the
        restriction applied to every file read before rows are resolved: the cost follows the
        tracks asked for, not the parts (the table's view re-resolves every key they touch)."""
        spec = TABLES[table]
        files = self.files[table]
        rule = dedup_rule(spec)
        only = f"SEMI JOIN {keys} _only USING (track_id)"
        if rule is None or self.as_of is not None or "track_id" not in spec.schema.names:
            return f"(SELECT * FROM ({self.current(table)}) {only})"
        snapshot = self._read(table, (files.snapshot,)) if files.snapshot else None
        parts = self._parts(table)
        reads = [r for r in (snapshot, parts) if r]
        if rule.partition == ("track_id",):

            def narrow(read: str) -> str:
                return f"SELECT * FROM ({read}) {only}"
        else:  # keyed by something else (sources by uri): every row of the keys those tracks' rows hold
            exprs = ", ".join(f"{p} AS _k{i}" for i, p in enumerate(rule.partition))
            held = " UNION ALL BY NAME ".join(f"(SELECT * FROM ({r}) {only})" for r in reads)
            match = " AND ".join(
                f"({p}) IS NOT DISTINCT FROM _held._k{i}" for i, p in enumerate(rule.partition)
            )

            def narrow(read: str) -> str:
                return f"SELECT * FROM ({read}) SEMI JOIN (SELECT DISTINCT {exprs} FROM ({held})) _held ON {match}"

        if not reads:
            return f"({empty_select(spec)})"
        # few rows: one window over them (current_sql's anti / semi joins would read each twice)
        window = f"QUALIFY row_number() OVER (PARTITION BY {', '.join(rule.partition)} ORDER BY {rule.order}) = 1"
        union = " UNION ALL BY NAME ".join(f"({narrow(r)})" for r in reads)
        return f"(SELECT * FROM (SELECT * FROM ({union}) {window}) {only})"

    def restricted(self, keys: str) -> Callable[[str], str]:
        """A `restrict` for manifest_sql / tracks_joined_sql: each table's view narrowed to the
        tracks in `keys` by `current_for`, any other source by a semi join."""
        tables = (
            {quote(name): name for name in TABLES}
            | {name: name for name in TABLES}
            | {"_tracks_current": "tracks"}
        )

        def wrap(source: str) -> str:
            if source in tables:
                return self.current_for(tables[source], keys)
            return f"(SELECT * FROM {source} SEMI JOIN {keys} _only USING (track_id))"

        return wrap

    def live_parts(self, table: str) -> str | None:
        """The table's parts that the manifest delta does not cover (all of them without one)."""
        covered = self.manifest_delta.covered.get(table) if self.manifest_delta else None
        if not covered:
            return self._parts(table)
        if self.parts_glob is not None:  # the catalog: whatever parts exist, less the covered ones
            if all(posixpath.basename(p) in covered for p in self.files[table].parts):
                return None  # none yet: the first part written rebuilds the catalog (catalog_has_parts)
            names = "[" + ", ".join(literal(n) for n in sorted(covered)) + "]"
            return (
                f"SELECT * EXCLUDE (filename) FROM read_parquet({self.parts_glob(table)}, union_by_name = true, "
                f"filename = true) WHERE NOT list_contains({names}, parse_filename(filename))"
            )
        live = tuple(p for p in self.files[table].parts if posixpath.basename(p) not in covered)
        return self._read(table, live) if live else None

    def _changed_since_base(self, tables: list[str]) -> list[str] | None:
        """Per table with parts the base does not cover, the SQL of the tracks they may change
        (None: some table's rows can change any track, so join everything)."""
        changed = []
        for table in tables:
            if table not in self.files:
                continue
            live = self.live_parts(table)
            if live is None:
                continue
            keys = self.changed_tracks(table, live)
            if keys is None:
                return None
            changed.append(keys)
        return changed

    def _manifest_base(self, columns: str = "*") -> str:
        """The snapshot's rows, with the delta's in place of the tracks it re-joined."""
        assert self.manifest_snapshot is not None
        snapshot = f"SELECT {columns} FROM read_parquet({self.spell('_manifest', (self.manifest_snapshot,))})"
        if self.manifest_delta is None:
            return snapshot
        delta = f"read_parquet({self.spell('_manifest', (self.manifest_delta.path,))})"
        return f"""SELECT * FROM ({snapshot}) _s ANTI JOIN (SELECT track_id FROM {delta}) _d USING (track_id)
    UNION ALL BY NAME SELECT {columns} FROM {delta}"""

    def manifest(self) -> str:
        """The manifest: its snapshot (and delta) where valid for these files, plus the tracks
        that parts written since touch, joined again; the full join otherwise."""
        if self.manifest_snapshot is None or self.as_of is not None:
            return manifest_sql()
        changed = self._changed_since_base(manifest_tables())
        if changed is None:
            return manifest_sql()
        base = self._manifest_base()
        if not changed:
            return base
        keys = " UNION ".join(f"({k})" for k in changed)
        # NOT MATERIALIZED: a materialised CTE stops DuckDB pruning columns anywhere in the query
        # (count(*) would read every column of the snapshot); the keys come from small parts.
        return f"""WITH _mkeys AS NOT MATERIALIZED (SELECT DISTINCT track_id FROM ({keys}) WHERE track_id IS NOT NULL)
    SELECT * FROM ({base}) _m ANTI JOIN _mkeys USING (track_id)
    UNION ALL BY NAME
    SELECT * FROM ({manifest_sql(self.restricted("_mkeys"))})"""

    def tracks(self) -> str:
        """`tracks` with `uris`: the manifest snapshot's leading columns where it is valid (the
        `uris` aggregate over every source path costs a second at millions of tracks), with the
        tracks that newer tracks / sources parts touch joined again."""
        joined = "SELECT * FROM _tracks_joined"
        if self.manifest_snapshot is None or self.as_of is not None:
            return joined
        changed = self._changed_since_base(["tracks", "sources"])
        if changed is None:
            return joined
        base = self._manifest_base(
            ", ".join(quote(c) for c in [*TABLES["tracks"].schema.names, "uris"])
        )
        if not changed:
            return base
        keys = " UNION ".join(f"({k})" for k in changed)
        return f"""WITH _tkeys AS NOT MATERIALIZED (SELECT DISTINCT track_id FROM ({keys}) WHERE track_id IS NOT NULL)
    SELECT * FROM ({base}) _t ANTI JOIN _tkeys USING (track_id)
    UNION ALL BY NAME
    SELECT * FROM ({tracks_joined_sql(self.restricted("_tkeys"))})"""

    def track_ids(self) -> str:
        """Every track_id once: the manifest base's, plus those of the tracks parts it does not
        cover (tracks are never removed), without resolving the tracks table's parts."""
        if self.manifest_snapshot is None or self.as_of is not None:
            return "SELECT track_id FROM _tracks_current"
        base = self._manifest_base("track_id")
        live = self.live_parts("tracks")
        return (
            base
            if live is None
            else f"SELECT track_id FROM ({base}) UNION SELECT track_id FROM ({live})"
        )

    def changed_tracks(self, table: str, parts: str | None = None) -> str | None:
        """The track_ids whose manifest row the table's parts (or the rows of `parts`) may
        change; None: any track's."""
        spec = TABLES[table]
        rule = dedup_rule(spec)
        parts = parts if parts is not None else self._parts(table)
        if rule is None or parts is None or "track_id" not in spec.schema.names:
            return None
        if rule.partition == ("track_id",):
            return f"SELECT track_id FROM ({parts})"
        # Keyed by something else (sources by uri): the new row's track, and the track the key's
        # current row named before (a path that now holds other audio leaves its old track).
        snapshot = self.files[table].snapshot
        if snapshot is None:
            return f"SELECT track_id FROM ({parts})"
        match = " AND ".join(f"(_s.{p}) IS NOT DISTINCT FROM (_p.{p})" for p in rule.partition)
        return f"""SELECT track_id FROM ({parts}) UNION ALL
            SELECT _s.track_id FROM ({self._read(table, (snapshot,))}) _s SEMI JOIN ({parts}) _p ON {match}"""


def manifest_tables() -> list[str]:
    """The tables the manifest reads: tracks, sources (its `uris`), the stage tables it joins
    and every table named in a manifest join or a derived view."""
    import re

    text = " ".join([*(j.sql for j in MANIFEST_JOINS.values()), *DERIVED_VIEWS.values()])
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text))
    return [
        name
        for name, spec in TABLES.items()
        if name in ("tracks", "sources")
        or (spec.stage_table and name not in MANIFEST_EXCLUDED_TABLES)
        or name in words
        or f"raw_{name}" in words
    ]


# Bump when what a view means changes in a way the SQL text below does not show.
VIEWS_VERSION = 1


def manifest_signature() -> str:
    """What a manifest snapshot's rows depend on besides the files: the manifest's SQL, the
    derived views it may read, the schemas of its tables."""
    import hashlib

    parts = [str(VIEWS_VERSION), manifest_sql(), *sorted(DERIVED_VIEWS.items())]
    parts += [f"{t}:{TABLES[t].schema}:{TABLES[t].key}" for t in manifest_tables()]
    return hashlib.sha256("\n".join(map(str, parts)).encode()).hexdigest()[:16]


def manifest_token(files: TableFiles, spec: TableSpec) -> list[str]:
    """What of a table's files a manifest snapshot was built from: its snapshot where it has a
    "current" rule (parts since are the delta), every history file where all rows count."""
    import posixpath

    if dedup_rule(spec) is None:
        return [posixpath.basename(u) for u in files.history]
    return [posixpath.basename(files.snapshot)] if files.snapshot else []


def manifest_tokens(files: dict[str, TableFiles]) -> dict[str, list[str]]:
    return {t: manifest_token(files.get(t, TableFiles()), TABLES[t]) for t in manifest_tables()}


def time_column(spec: TableSpec) -> str | None:
    """The column saying when a row was written (what an "as of" cut compares)."""
    for name in ("created_at", "finished_at"):
        if name in spec.schema.names:
            return name
    return None


def current_sql(rule: DedupRule, snapshot: str | None, delta: str | None, empty: str) -> str:
    """Merge a deduplicated snapshot with newer rows: keys the new rows do not touch come
    straight from the snapshot; the touched keys are re-resolved over snapshot + new rows."""
    partition = ", ".join(rule.partition)
    window = f"QUALIFY row_number() OVER (PARTITION BY {partition} ORDER BY {rule.order}) = 1"
    if snapshot is None and delta is None:
        return empty
    if delta is None:
        return snapshot  # type: ignore[return-value]
    if snapshot is None:
        return f"SELECT * FROM ({delta}) {window}"
    keys = ", ".join(f"{p} AS _k{i}" for i, p in enumerate(rule.partition))
    # Bare column names in the join condition resolve to the snapshot (_keys has only _k*).
    # track_id is never NULL: a plain equality join; other keys may be (errors without a track).
    match = " AND ".join(
        f"{p} = _keys._k{i}" if p == "track_id" else f"({p}) IS NOT DISTINCT FROM _keys._k{i}"
        for i, p in enumerate(rule.partition)
    )
    # Not MATERIALIZED: inlined, each use reads only the columns it needs (a materialised delta
    # would hold every column, beat lists included, in memory).
    return f"""WITH _delta AS NOT MATERIALIZED ({delta}),
      _keys AS NOT MATERIALIZED (SELECT DISTINCT {keys} FROM _delta)
    SELECT _snap.* FROM ({snapshot}) _snap ANTI JOIN _keys ON {match}
    UNION ALL BY NAME
    SELECT * FROM (
      SELECT _snap.* FROM ({snapshot}) _snap SEMI JOIN _keys ON {match}
      UNION ALL BY NAME SELECT * FROM _delta) {window}"""


def create_views(
    con: duckdb.DuckDBPyConnection,
    files: dict[str, TableFiles] | CorpusFiles,
    as_of: dict[str, str] | None = None,
    manifest_snapshot: str | None = None,
    manifest_delta: ManifestDelta | None = None,
) -> None:
    """Create every view on `con` for the given table files (or a corpus to list them from)."""
    if not isinstance(files, dict):
        files = {name: files.table_files(name) for name in TABLES}
    views = ViewSql(
        files, as_of=as_of, manifest_snapshot=manifest_snapshot, manifest_delta=manifest_delta
    )
    for name, sql in all_view_sql(views).items():
        con.execute(f"CREATE VIEW {quote(name)} AS {sql}")
    for signature, body in MACROS.items():
        con.execute(f"CREATE MACRO {signature} AS {body}")


def all_view_sql(v: ViewSql) -> dict[str, str]:
    """Every view, in creation order: raw_<t>, <t>, tracks, derived views, manifest."""
    out: dict[str, str] = {}
    for name in TABLES:
        out[f"raw_{name}"] = v.raw(name)
    for name in TABLES:
        if name != "tracks":
            out[name] = v.current(name)
    out["_tracks_current"] = v.current("tracks")
    out["_tracks_joined"] = tracks_joined_sql()
    out["tracks"] = v.tracks()
    out["_track_ids"] = v.track_ids()
    out["stale"] = stale_sql(v.current_for)
    out.update(DERIVED_VIEWS)
    out["manifest"] = v.manifest()
    return out


def stale_sql(current: Callable[[str, str], str]) -> str:
    """One row per current stage row whose lineage names an input row that is no longer the
    current row of its table (reprocessed, redone by a new stage version or config, or gone):
    (stage_table, track_id, input_table). `current(table, keys)`: that table's current rows for
    the tracks in `keys` (ViewSql.current_for), so only the rows some lineage names are read."""
    stage_tables = [name for name, spec in TABLES.items() if spec.stage_table]
    if not stage_tables:
        return "SELECT NULL::VARCHAR AS stage_table, NULL::VARCHAR AS track_id, NULL::VARCHAR AS input_table WHERE false"

    def named_in_lineage(table: str) -> str:
        return f'(SELECT track_id FROM used WHERE used.i."table" = {literal(table)})'

    keys = " UNION ALL ".join(
        f"SELECT {literal(t)} AS input_table, track_id, stage_version, config_hash, run_id FROM {current(t, named_in_lineage(t))}"
        for t in stage_tables
    )
    used = " UNION ALL ".join(
        f"SELECT {literal(t)} AS stage_table, track_id, unnest(inputs) AS i FROM {quote(t)} WHERE len(inputs) > 0"
        for t in stage_tables
    )
    return f"""WITH used AS ({used}),
      cur AS ({keys})
    SELECT DISTINCT u.stage_table, u.track_id, u.i."table" AS input_table FROM used u
    LEFT JOIN cur c ON c.input_table = u.i."table" AND c.track_id = u.track_id
    WHERE c.run_id IS DISTINCT FROM u.i.run_id OR c.stage_version IS DISTINCT FROM u.i.stage_version
       OR c.config_hash IS DISTINCT FROM u.i.config_hash"""


# Scalar macros created with the views (in songmill's connections and in the catalog).
MACROS: dict[str, str] = {
    # `--where "is_stale(track_id)"`: some stage row of the track is stale.
    "is_stale(tid)": "tid IN (SELECT track_id FROM stale)",
    # `--where "is_stale_in(track_id, 'features')"`: its row in that table is.
    "is_stale_in(tid, tbl)": "tid IN (SELECT track_id FROM stale WHERE stage_table = tbl)",
}


# The `sources` rows that name a track's path.
SOURCE_OK = "status = 'ok' AND track_id IS NOT NULL"


def _seen_under_several_paths(ok_sources: str) -> str:
    """The track ids of `ok_sources` (rows that pass SOURCE_OK) that have more than one path."""
    return f"SELECT track_id FROM {ok_sources} GROUP BY track_id HAVING count(*) > 1"


def multi_path_sources_sql() -> str:
    """The only `sources` rows `uris` needs beyond `tracks`: those of tracks seen under several
    paths (few). `sources` is not sorted by track_id, so a manifest snapshot gathers them once
    rather than scanning every source row in each of its track_id buckets."""
    several = _seen_under_several_paths(f"(SELECT track_id FROM sources WHERE {SOURCE_OK})")
    return f"SELECT * FROM sources WHERE {SOURCE_OK} AND track_id IN ({several})"


def tracks_joined_sql(restrict: Callable[[str], str] | None = None) -> str:
    """`tracks` with `uris`, every path the track was seen under; with `restrict`, each source
    wrapped by it (only some tracks: then only their sources rows are aggregated)."""
    wrap = restrict or (lambda source: source)
    # `uris`: the list is built only for the few tracks seen under several paths (a list
    # aggregate over every source path costs seconds at millions of tracks).
    return f"""WITH ok AS (SELECT track_id, uri FROM {wrap("sources")} WHERE {SOURCE_OK}),
        multi AS ({_seen_under_several_paths("ok")}),
        u AS (SELECT track_id, list(DISTINCT uri ORDER BY uri) AS uris FROM ok SEMI JOIN multi USING (track_id) GROUP BY track_id)
      SELECT t.*, coalesce(u.uris, [t.uri]) AS uris FROM {wrap("_tracks_current")} t LEFT JOIN u USING (track_id)"""


def manifest_sql(restrict: Callable[[str], str] | None = None) -> str:
    """The manifest as a join of every table's current rows; with `restrict`, each joined
    source wrapped by it (only some tracks: the delta of a manifest snapshot)."""
    wrap = restrict or (lambda source: source)
    taken = set(TABLES["tracks"].schema.names) | {"uris"}
    selects = ["t.*"]
    joins = []
    for i, (name, spec) in enumerate(TABLES.items()):
        if not spec.stage_table or name in MANIFEST_EXCLUDED_TABLES:
            continue
        alias = f"s{i}"
        for f in spec.schema:
            if f.name in STAGE_KEY_COLUMNS:
                continue
            out = f.name if f.name not in taken else f"{name}_{f.name}"
            taken.add(out)
            selects.append(f"{alias}.{quote(f.name)} AS {quote(out)}")
        joins.append(f"LEFT JOIN {wrap(quote(name))} {alias} USING (track_id)")
    for i, join in enumerate(MANIFEST_JOINS.values()):
        alias = f"j{i}"
        for col in join.columns:
            out = col if col not in taken else f"{join.name}_{col}"
            taken.add(out)
            selects.append(f"{alias}.{quote(col)} AS {quote(out)}")
        joins.append(f"LEFT JOIN {wrap('(' + join.sql + ')')} {alias} USING (track_id)")
    # restricted: the tracks rows joined from their sources (not the `tracks` view, which reads
    # every track of the manifest snapshot before the restriction applies)
    base = f"({tracks_joined_sql(restrict)})" if restrict else "tracks"
    return f"SELECT {', '.join(selects)} FROM {base} t {' '.join(joins)}"
