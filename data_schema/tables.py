"""What the data is: one Arrow schema per table, with the corpus schema version.

Every table is a folder of Parquet part files. Stage tables share the key columns
`(track_id, stage_version, config_hash)` plus `run_id` and `created_at`; "current" means the row
was written by the stage's present version and config. Later stages add their tables with
`register_table` next to the stage that writes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

# Bump when a table changes in a way an older reader would misread. A corpus records the version
# it was written with; readers refuse versions they do not know (see store.Corpus).
# 2: stage rows record their lineage (`inputs`). Version-1 corpora are read as they are (their rows
# have no lineage, so they are never stale) and marked version 2 on their first write.
SCHEMA_VERSION = 2
SUPPORTED_SCHEMA_VERSIONS = frozenset({1, 2})

# One input row a stage result was computed from: which table, and the key of the row used.
INPUT_ROW = pa.struct(
    [
        pa.field("table", pa.string()),
        pa.field("stage_version", pa.int32()),
        pa.field("config_hash", pa.string()),
        pa.field("run_id", pa.string()),
    ]
)

STAGE_KEY_FIELDS: list[pa.Field] = [
    pa.field("track_id", pa.string(), nullable=False),
    pa.field("stage_version", pa.int32(), nullable=False),
    pa.field("config_hash", pa.string(), nullable=False),
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
    # Lineage: the rows of other stage tables this result was computed from. When one of them is
    # no longer the current row of its table, this result is stale (views.py `stale`).
    pa.field("inputs", pa.list_(INPUT_ROW)),
]


@dataclass(frozen=True)
class TableSpec:
    """A table: its name, Arrow schema and whether it is a per-track stage result table."""

    name: str
    schema: pa.Schema
    stage_table: bool = False
    description: str = ""
    # Columns that identify a row for "latest wins" resolution in the DuckDB view.
    key: tuple[str, ...] = field(default=("track_id",))
    # Long per-event lists (beat times): in the `manifest` view, left out of a manifest export
    # unless asked for (`--columns all`): no trainer reads them, and they are most of its bytes.
    bulk_columns: tuple[str, ...] = ()


TABLES: dict[str, TableSpec] = {}


def register_table(
    name: str,
    fields: list[pa.Field],
    *,
    stage_table: bool = True,
    description: str = "",
    key: tuple[str, ...] = ("track_id",),
    bulk_columns: tuple[str, ...] = (),
) -> TableSpec:
    """Declare a table. Stage tables get the shared key columns prepended."""
    all_fields = (STAGE_KEY_FIELDS + fields) if stage_table else fields
    spec = TableSpec(name, pa.schema(all_fields), stage_table, description, key, bulk_columns)
    existing = TABLES.get(name)
    if existing is not None and existing.schema != spec.schema:
        raise ValueError(f"table {name!r} registered twice with different schemas")
    TABLES[name] = spec
    return spec


def table_spec(name: str) -> TableSpec:
    try:
        return TABLES[name]
    except KeyError:
        raise KeyError(f"unknown table {name!r}; known: {sorted(TABLES)}") from None


_TS = pa.timestamp("us", tz="UTC")

TRACKS = register_table(
    "tracks",
    [
        pa.field("track_id", pa.string(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("size_bytes", pa.int64()),
        pa.field("duration_s", pa.float64()),
        pa.field("frames", pa.int64()),
        pa.field("sample_rate", pa.int32()),
        pa.field("channels", pa.int32()),
        pa.field("codec", pa.string()),
        pa.field("container", pa.string()),
        pa.field("bit_depth", pa.int32()),
        pa.field("run_id", pa.string()),
        pa.field("created_at", _TS),
    ],
    stage_table=False,
    description="One row per distinct audio content (track_id = sha256 of the bytes).",
)

SOURCES = register_table(
    "sources",
    [
        pa.field("uri", pa.string(), nullable=False),
        pa.field("size_bytes", pa.int64()),
        pa.field("mtime", pa.float64()),
        pa.field("track_id", pa.string()),
        pa.field("status", pa.string()),  # ok | error | skipped (not audio)
        pa.field("run_id", pa.string()),
        pa.field("created_at", _TS),
        pa.field("reason", pa.string()),  # why a file was skipped
    ],
    stage_table=False,
    key=("uri",),
    description="Every file seen by ingest: the path+size+mtime shortcut for incremental runs.",
)

QC = register_table(
    "qc",
    [
        pa.field("duration_s", pa.float64()),
        pa.field("peak_dbfs", pa.float64()),
        pa.field("rms_dbfs", pa.float64()),
        pa.field("silence_ratio", pa.float64()),
        pa.field("clipping_ratio", pa.float64()),
        pa.field("loudness_lufs", pa.float64()),
        pa.field("bandwidth_hz", pa.float64()),
        pa.field("dc_offset", pa.float64()),
        pa.field("qc_pass", pa.bool_()),
        pa.field("qc_reasons", pa.list_(pa.string())),
    ],
    description="Signal quality control.",
)

MUSIC = register_table(
    "music",
    [
        pa.field("bpm", pa.float64()),
        pa.field("bpm_confidence", pa.float64()),
        # every tempo estimator's answer ({estimator, bpm, confidence}: dsp, percival, and the
        # learned backend where the cascade ran it), the share of them within 4 % of `bpm` (an
        # octave away counts half) and where the beats came from (dsp, beatnet, madmom, beat_this)
        pa.field("bpm_agreement", pa.float64()),
        pa.field(
            "bpm_estimates",
            pa.list_(
                pa.struct(
                    [
                        pa.field("estimator", pa.string()),
                        pa.field("bpm", pa.float64()),
                        pa.field("confidence", pa.float64()),
                    ]
                )
            ),
        ),
        pa.field("beat_source", pa.string()),
        pa.field("beats", pa.list_(pa.float32())),
        pa.field("downbeats", pa.list_(pa.float32())),
        pa.field("key_tonic", pa.string()),
        pa.field("key_mode", pa.string()),
        pa.field("keyscale", pa.string()),
        pa.field("key_strength", pa.float64()),
        pa.field("key_confidence", pa.float64()),
        pa.field("tuning_hz", pa.float64()),
        pa.field("time_signature", pa.string()),
    ],
    description="Tempo, beats, downbeats, metre, key and tuning.",
    bulk_columns=("beats", "downbeats"),
)

ERRORS = register_table(
    "errors",
    [
        pa.field("track_id", pa.string()),
        pa.field("uri", pa.string()),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("stage_version", pa.int32()),
        pa.field("config_hash", pa.string()),
        pa.field("error_type", pa.string(), nullable=False),
        pa.field("message", pa.string()),
        # False for per-track failures (re-running would fail the same way); True for failures of
        # the stage itself (missing weights) that a later run should retry.
        pa.field("retryable", pa.bool_()),
        pa.field("run_id", pa.string()),
        pa.field("created_at", _TS),
    ],
    stage_table=False,
    key=(),
    description="One row per failure: a corrupt file, a stage that raised on a track.",
)

RUNS = register_table(
    "runs",
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("stage_version", pa.int32()),
        pa.field("config_hash", pa.string()),
        pa.field("n_input", pa.int64()),
        pa.field("n_ok", pa.int64()),
        pa.field("n_error", pa.int64()),
        pa.field("audio_seconds", pa.float64()),
        pa.field("wall_s", pa.float64()),
        pa.field("host", pa.string()),
        pa.field("started_at", _TS),
        pa.field("finished_at", _TS),
    ],
    stage_table=False,
    key=(),
    description="One row per stage per run: counts, audio seconds and wall time.",
)
