"""DuckDB views over the corpus tables.

For every table `t` there is `raw_t` (every row of every part file) and `t` (what users mean):
- stage tables: the latest result per track, by stage version then time;
- `tracks`: one row per track_id, with `uris`, every path it was seen under;
- keyed catalogs (`sources` by path, `lyrics` by lyric_id): the newest row per key;
- `errors`: one row per distinct failure (re-runs of a retryable failure do not repeat it);
- `manifest`: one row per track, the latest result of every stage joined on `track_id`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import duckdb
import pyarrow as pa
from songmill.data_schema.tables import STAGE_KEY_FIELDS, TABLES


class PartFiles(Protocol):
    """What the views need of a corpus (data_schema.store.Corpus): where each table's parts are."""

    def part_files(self, table: str) -> list[str]: ...

    def part_glob_url(self, table: str) -> str: ...

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


def register_manifest_join(name: str, sql: str, columns: tuple[str, ...]) -> None:
    MANIFEST_JOINS[name] = ManifestJoin(name, sql, columns)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def create_views(con: duckdb.DuckDBPyConnection, corpus: PartFiles) -> None:
    for name, spec in TABLES.items():
        if corpus.part_files(name):
            source = f"read_parquet({_literal(corpus.part_glob_url(name))}, union_by_name = true)"
        else:
            con.register(f"_empty_{name}", pa.table({f.name: pa.array([], f.type) for f in spec.schema}))
            source = f"_empty_{name}"
        con.execute(f"CREATE VIEW raw_{name} AS SELECT * FROM {source}")

    for name, spec in TABLES.items():
        if spec.stage_table:
            con.execute(
                f"""CREATE VIEW {name} AS SELECT * EXCLUDE (_rn) FROM (
                      SELECT *, row_number() OVER (
                        PARTITION BY track_id ORDER BY stage_version DESC, created_at DESC) AS _rn
                      FROM raw_{name}) WHERE _rn = 1"""
            )

    for name, spec in TABLES.items():
        # Keyed catalogs (sources by uri, lyrics by lyric_id): the newest row per key.
        if not spec.stage_table and spec.key and name != "tracks":
            keys = ", ".join(_quote(k) for k in spec.key)
            con.execute(
                f"""CREATE VIEW {name} AS SELECT * EXCLUDE (_rn) FROM (
                      SELECT *, row_number() OVER (PARTITION BY {keys} ORDER BY created_at DESC) AS _rn
                      FROM raw_{name}) WHERE _rn = 1"""
            )
    con.execute(
        """CREATE VIEW tracks AS
           WITH t AS (
             SELECT * EXCLUDE (_rn) FROM (
               SELECT *, row_number() OVER (PARTITION BY track_id ORDER BY created_at) AS _rn
               FROM raw_tracks) WHERE _rn = 1),
           u AS (
             SELECT track_id, list(DISTINCT uri ORDER BY uri) AS uris
             FROM sources WHERE status = 'ok' GROUP BY track_id)
           SELECT t.*, coalesce(u.uris, [t.uri]) AS uris FROM t LEFT JOIN u USING (track_id)"""
    )
    con.execute(
        """CREATE VIEW errors AS SELECT * EXCLUDE (_rn) FROM (
             SELECT *, row_number() OVER (
               PARTITION BY coalesce(track_id, uri), stage, stage_version, config_hash, error_type
               ORDER BY created_at DESC) AS _rn
             FROM raw_errors) WHERE _rn = 1"""
    )
    con.execute("CREATE VIEW runs AS SELECT * FROM raw_runs")
    _create_manifest(con)


def _create_manifest(con: duckdb.DuckDBPyConnection) -> None:
    taken = {row[0] for row in con.execute("DESCRIBE tracks").fetchall()}
    selects = ["t.*"]
    joins = []
    for i, (name, spec) in enumerate(TABLES.items()):
        if not spec.stage_table or name in MANIFEST_EXCLUDED_TABLES:
            continue
        alias = f"s{i}"
        for field in spec.schema:
            if field.name in STAGE_KEY_COLUMNS:
                continue
            out = field.name if field.name not in taken else f"{name}_{field.name}"
            taken.add(out)
            selects.append(f"{alias}.{_quote(field.name)} AS {_quote(out)}")
        joins.append(f"LEFT JOIN {name} {alias} USING (track_id)")
    for i, join in enumerate(MANIFEST_JOINS.values()):
        alias = f"j{i}"
        for col in join.columns:
            out = col if col not in taken else f"{join.name}_{col}"
            taken.add(out)
            selects.append(f"{alias}.{_quote(col)} AS {_quote(out)}")
        joins.append(f"LEFT JOIN ({join.sql}) {alias} USING (track_id)")
    con.execute(f"CREATE VIEW manifest AS SELECT {', '.join(selects)} FROM tracks t {' '.join(joins)}")
