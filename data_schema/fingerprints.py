"""Tables of the near-duplicate audio stage: `fingerprints` (one Chromaprint fingerprint per track),
`fingerprint_index` (the index keys of each indexed fingerprint, so a new fingerprint is matched
without reading the others), `dup_clusters` (each index build: the tracks that are copies of one
recording) and `dup_index_builds` (one row per build), with the `near_duplicates` view and the
manifest's `dup_cluster` column.

A fingerprint is Chromaprint's raw form: one 32-bit value per ~0.124 s of audio (11025 Hz mono),
stored as little-endian uint32 bytes. Each index build (annotate/fingerprint.py) writes every
member of every cluster with the build's `index_id`, then its `dup_index_builds` row; the view
shows the clusters of the newest build, none when that build found none.
"""

from __future__ import annotations

import pyarrow as pa
from songmill.data_schema.tables import register_table
from songmill.data_schema.views import (
    MANIFEST_EXCLUDED_TABLES,
    register_manifest_join,
    register_view,
)

FINGERPRINTS = register_table(
    "fingerprints",
    [
        pa.field("algorithm", pa.string()),  # e.g. chromaprint-2
        pa.field("fingerprint", pa.binary()),  # little-endian uint32 values
        pa.field("frames", pa.int32()),
        pa.field("seconds", pa.float64()),  # audio fingerprinted (from the start of the track)
    ],
    description="Chromaprint fingerprint per track (raw 32-bit values), for near-duplicate search.",
)

DUP_CLUSTERS = register_table(
    "dup_clusters",
    [
        pa.field("track_id", pa.string(), nullable=False),
        pa.field("cluster_id", pa.string(), nullable=False),  # the smallest track_id of the cluster
        pa.field("canonical_track_id", pa.string()),  # the member to keep (lossless, longest...)
        pa.field("similarity", pa.float64()),  # fraction of matching frames with its closest member
        pa.field("index_id", pa.string(), nullable=False),
        pa.field("algorithm", pa.string()),
        pa.field("threshold", pa.float64()),
        pa.field("created_at", pa.timestamp("us", tz="UTC")),
    ],
    stage_table=False,
    key=(),
    description="Near-duplicate clusters, one full set per index build (the newest build is current).",
)

FINGERPRINT_INDEX = register_table(
    "fingerprint_index",
    [
        pa.field("track_id", pa.string(), nullable=False),
        pa.field("fingerprint_run_id", pa.string()),  # the `fingerprints` row these keys are of
        pa.field("algorithm", pa.string()),
        pa.field("keys", pa.list_(pa.int32())),  # index keys (top bits of sampled values)
        pa.field("positions", pa.list_(pa.int32())),  # their frame numbers
        pa.field("index_id", pa.string()),  # the build that indexed it
        pa.field("created_at", pa.timestamp("us", tz="UTC")),
    ],
    stage_table=False,
    description="Index keys of each indexed fingerprint (the newest row per track is current).",
)

DUP_INDEX_BUILDS = register_table(
    "dup_index_builds",
    [
        pa.field("index_id", pa.string(), nullable=False),
        pa.field("mode", pa.string()),  # full | incremental
        pa.field("algorithm", pa.string()),
        pa.field("settings", pa.string()),  # JSON: the index settings of the build
        pa.field("fingerprints", pa.int64()),  # indexed after the build
        pa.field("new_fingerprints", pa.int64()),  # matched by the build
        pa.field("candidate_pairs", pa.int64()),
        pa.field("edges", pa.int64()),
        pa.field("clustered_tracks", pa.int64()),
        pa.field("created_at", pa.timestamp("us", tz="UTC")),
    ],
    stage_table=False,
    key=(),
    description="One row per near-duplicate index build; its clusters are in dup_clusters.",
)

MANIFEST_EXCLUDED_TABLES.add("fingerprints")  # the binary fingerprint stays out of the manifest

register_view(
    "near_duplicates",
    # the newest build (corpora from before dup_index_builds: the newest clusters)
    """SELECT track_id, cluster_id, canonical_track_id, similarity FROM dup_clusters
       WHERE index_id = coalesce((SELECT max(index_id) FROM dup_index_builds), (SELECT max(index_id) FROM dup_clusters))""",
)
register_manifest_join(
    "near_duplicates",
    "SELECT track_id, cluster_id AS dup_cluster FROM near_duplicates",
    ("dup_cluster",),
)
