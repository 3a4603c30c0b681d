"""Tables of the labelling stages: aesthetics, structure, captions and lyric_sections.

- `aesthetics`: Audiobox Aesthetics scores (CE content enjoyment, CU content usefulness, PC
  production complexity, PQ production quality; roughly 1-10), the mean and the spread over 10 s
  windows, and `aesthetics_pass` from the configured thresholds. All columns reach the manifest,
  so `--where "aesthetics_pass"` or `--where "aes_pq >= 7"` filter on them.
- `structure`: sections (start, end, label) and the form as one string (`intro verse chorus ...`).
- `captions`: one row per track, one `caption_<style>` text column per prompt style (every one of
  them is a text condition the features stage encodes), the normalised genre / mood / instrument
  tags, and the contradictions found between the audio LM's text and the measurements.
- `lyric_sections`: the lyric variants the trainer reads (with and without section tags), their
  G2P and BPE token ids.
"""

from __future__ import annotations

import pyarrow as pa
from songmill.data_schema.tables import register_table
from songmill.data_schema.views import MANIFEST_EXCLUDED_TABLES, register_manifest_join

AESTHETICS_AXES = ("ce", "cu", "pc", "pq")

AESTHETICS = register_table(
    "aesthetics",
    [pa.field(f"aes_{axis}", pa.float64()) for axis in AESTHETICS_AXES]
    + [pa.field(f"aes_{axis}_std", pa.float64()) for axis in AESTHETICS_AXES]
    + [
        pa.field("aes_windows", pa.int32()),
        pa.field("aesthetics_pass", pa.bool_()),
        # Which thresholds failed, e.g. ["pq<6.0"].
        pa.field("aesthetics_reasons", pa.list_(pa.string())),
        pa.field("aes_model", pa.string()),
    ],
    description="Audiobox Aesthetics CE / CU / PC / PQ (mean and spread over 10 s windows) and the threshold filter.",
)

SECTION = pa.struct(
    [
        pa.field("start", pa.float32()),
        pa.field("end", pa.float32()),
        pa.field("label", pa.string()),
        pa.field("confidence", pa.float32()),
    ]
)
SECTION_LABELS = ("intro", "verse", "pre-chorus", "chorus", "bridge", "instrumental", "outro")

STRUCTURE = register_table(
    "structure",
    [
        pa.field("sections", pa.list_(SECTION)),
        pa.field("form", pa.string()),  # the labels in order, space separated
        pa.field("n_sections", pa.int32()),
        pa.field("has_chorus", pa.bool_()),
        pa.field("structure_backend", pa.string()),
        pa.field("structure_model", pa.string()),
    ],
    description="Song sections with labels (intro / verse / pre-chorus / chorus / bridge / instrumental / outro).",
)

CAPTION_STYLES = ("tags", "description", "detailed", "use_case")
# The styles that reach the features stage: the audio LM's styles plus the recaption.
CAPTION_TEXT_COLUMNS = tuple(f"caption_{s}" for s in CAPTION_STYLES) + ("caption_recaption",)

CAPTIONS = register_table(
    "captions",
    [pa.field(name, pa.string()) for name in CAPTION_TEXT_COLUMNS]
    + [
        pa.field("genres", pa.list_(pa.string())),
        pa.field("moods", pa.list_(pa.string())),
        pa.field("instruments", pa.list_(pa.string())),
        # e.g. "bpm: caption says 90, measured 128"; empty when the LM agrees with the measurements.
        pa.field("contradictions", pa.list_(pa.string())),
        pa.field("caption_flagged", pa.bool_()),
        pa.field("model", pa.string()),
    ],
    description="Audio-LM captions (one column per prompt style), a recaption from the measurements, normalised tags.",
)

LYRIC_SECTIONS = register_table(
    "lyric_sections",
    [
        pa.field("lyrics_plain", pa.string()),
        pa.field(
            "lyrics_tagged", pa.string()
        ),  # [verse] / [chorus] ... ; "[instrumental]" for instrumentals
        pa.field("lyrics_source", pa.string()),  # canonical | transcript | instrumental | none
        pa.field("lyrics_lang", pa.string()),
        pa.field("lyrics_phonemes", pa.string()),  # G2P (IPA) for non-Romanised scripts, else null
        pa.field("lyric_token_ids", pa.list_(pa.int32())),
        pa.field("lyric_tokenizer", pa.string()),
        pa.field("n_lyric_tokens", pa.int32()),
    ],
    description="Lyric variants with and without section tags, G2P and BPE lyric token ids.",
)

MANIFEST_EXCLUDED_TABLES.update({"structure", "lyric_sections"})
register_manifest_join(
    "structure",
    "SELECT track_id, form AS structure_form, n_sections, has_chorus FROM structure",
    ("structure_form", "n_sections", "has_chorus"),
)
register_manifest_join(
    "lyric_sections",
    """SELECT track_id, lyrics_tagged, lyrics_plain, lyrics_source, n_lyric_tokens FROM lyric_sections""",
    ("lyrics_tagged", "lyrics_plain", "lyrics_source", "n_lyric_tokens"),
)
