"""Tables of the vocals-to-lyrics stages (separation, transcripts, lyrics, lyrics_matches).

`lyrics` is the canonical lyrics database (one row per lyric_id; a re-added lyric_id is a newer
row that wins). The manifest gets curated columns of these tables through explicit joins rather
than every column: segment lists and candidate lists stay in their tables.
"""

from __future__ import annotations

import pyarrow as pa
from songmill.data_schema.tables import register_table
from songmill.data_schema.views import MANIFEST_EXCLUDED_TABLES, register_manifest_join

SEPARATION = register_table(
    "separation",
    [
        pa.field("model", pa.string()),
        pa.field("sample_rate", pa.int32()),
        pa.field("vocals_uri", pa.string()),
        pa.field("accompaniment_uri", pa.string()),
        # Share of the mix energy in the vocal stem.
        pa.field("vocal_energy_ratio", pa.float64()),
        # Share of 50 ms frames where the vocal stem is active (see annotate/separate.py).
        pa.field("vocal_activity_ratio", pa.float64()),
        pa.field("is_instrumental", pa.bool_()),
        pa.field("seconds", pa.float64()),
    ],
    description="Demucs stems (vocals, accompaniment) written as FLAC under stems/, and vocal activity.",
)

TRANSCRIPT_SEGMENT = pa.struct(
    [
        pa.field("start", pa.float32()),
        pa.field("end", pa.float32()),
        pa.field("text", pa.string()),
        pa.field("avg_logprob", pa.float32()),
        pa.field("no_speech_prob", pa.float32()),
        pa.field("compression_ratio", pa.float32()),
    ]
)

TRANSCRIPTS = register_table(
    "transcripts",
    [
        pa.field("text", pa.string()),
        pa.field("language", pa.string()),
        pa.field("language_prob", pa.float64()),
        pa.field("segments", pa.list_(TRANSCRIPT_SEGMENT)),
        pa.field("input", pa.string()),  # vocals | mix | none (instrumental: not transcribed)
        pa.field("input_uri", pa.string()),
        pa.field("backend", pa.string()),
        pa.field("model", pa.string()),
        pa.field("speech_seconds", pa.float64()),
        # Whisper hallucination guards that fired (repeated_ngram, compression_ratio,
        # no_speech, low_logprob, known_phrase); `hallucination` when any did.
        pa.field("hallucination", pa.bool_()),
        pa.field("hallucination_flags", pa.list_(pa.string())),
    ],
    description="Whisper transcripts of the vocal stem (or the mix), with segments and hallucination flags.",
)

LYRICS = register_table(
    "lyrics",
    [
        pa.field("lyric_id", pa.string(), nullable=False),
        pa.field("title", pa.string()),
        pa.field("artist", pa.string()),
        pa.field("language", pa.string()),
        pa.field("lyrics", pa.string()),
        pa.field("ipa", pa.string()),
        pa.field("phonemes_version", pa.int32()),
        # MinHash of the IPA shingles: num_perm little-endian uint32 values (annotate/minhash.py).
        pa.field("signature", pa.binary()),
        pa.field("num_perm", pa.int32()),
        pa.field("seed", pa.int64()),
        pa.field("scheme", pa.string()),
        pa.field("shingle_size", pa.int32()),
        pa.field("content_sha256", pa.string()),
        pa.field("source", pa.string()),
        pa.field("run_id", pa.string()),
        pa.field("created_at", pa.timestamp("us", tz="UTC")),
    ],
    stage_table=False,
    key=("lyric_id",),
    description="Canonical lyrics with IPA and MinHash signatures; the newest row of a lyric_id wins.",
)

LYRICS_CANDIDATE = pa.struct(
    [
        pa.field("lyric_id", pa.string()),
        pa.field("estimate", pa.float32()),  # MinHash Jaccard estimate
        pa.field("jaccard", pa.float32()),  # exact shingle Jaccard
        pa.field("containment", pa.float32()),  # share of the transcript's shingles in the lyric
        pa.field("alignment", pa.float32()),  # phoneme alignment similarity
        pa.field("score", pa.float32()),
    ]
)

LYRICS_MATCHES = register_table(
    "lyrics_matches",
    [
        pa.field("lyric_id", pa.string()),  # null: no lyric scored above the threshold
        pa.field("score", pa.float64()),
        pa.field("matched", pa.bool_()),
        pa.field("method", pa.string()),
        pa.field("candidates", pa.list_(LYRICS_CANDIDATE)),
        pa.field("query_ipa", pa.string()),
        pa.field("db_lyrics", pa.int64()),
        pa.field("db_fingerprint", pa.string()),
    ],
    description="Best canonical lyric per track (MinHash LSH candidates, re-scored exactly).",
)

# The newest row of every lyric_id (also what `songmill lyrics` reads).
LATEST_LYRICS_SQL = """SELECT * EXCLUDE (_rn) FROM (
    SELECT *, row_number() OVER (PARTITION BY lyric_id ORDER BY created_at DESC) AS _rn
    FROM raw_lyrics) WHERE _rn = 1"""

MANIFEST_EXCLUDED_TABLES.update({"separation", "transcripts", "lyrics_matches"})

register_manifest_join(
    "separation",
    "SELECT track_id, is_instrumental, vocal_activity_ratio, vocals_uri, accompaniment_uri FROM separation",
    ("is_instrumental", "vocal_activity_ratio", "vocals_uri", "accompaniment_uri"),
)
register_manifest_join(
    "transcripts",
    """SELECT track_id, text AS transcript, language AS transcript_language,
              hallucination AS transcript_hallucination FROM transcripts""",
    ("transcript", "transcript_language", "transcript_hallucination"),
)
register_manifest_join(
    "lyrics_matches",
    f"""SELECT m.track_id, m.lyric_id, m.score AS lyrics_score, l.lyrics, l.language AS lyrics_language,
               l.title AS lyrics_title, l.artist AS lyrics_artist
        FROM lyrics_matches m LEFT JOIN ({LATEST_LYRICS_SQL}) l ON m.matched AND l.lyric_id = m.lyric_id""",
    ("lyric_id", "lyrics_score", "lyrics", "lyrics_language", "lyrics_title", "lyrics_artist"),
)
