"""Tables of the training-feature stage (features).

One row per track: where its features shard lives (content-addressed safetensors, float16) and
what it holds. The shard layout is documented in annotate/features.py.
"""

import pyarrow as pa
from songmill.data_schema.tables import register_table

FEATURES = register_table(
    "features",
    [
        pa.field("features_url", pa.string()),
        pa.field("features_sha256", pa.string()),
        pa.field("features_bytes", pa.int64()),
        pa.field("latent_frames", pa.int32()),
        pa.field("latent_fps", pa.float64()),
        pa.field("caption_styles", pa.list_(pa.string())),
        pa.field("lyric_tokens", pa.int32()),
        pa.field("lyric_tokenizer", pa.string()),
        pa.field("repa_targets", pa.list_(pa.string())),
        pa.field("has_speaker", pa.bool_()),
        pa.field("dcae_id", pa.string()),
        pa.field("text_encoder_id", pa.string()),
    ],
    description="Cached training features: DCAE latents, text embeddings, lyric ids, REPA targets, speaker.",
)
