"""features: everything the DiT trainer needs from frozen models, computed once per track.

One float16 safetensors shard per track (layout in data_schema/shards.py: DCAE latent, text
states per caption style, lyric ids, REPA targets, speaker vector), and a `features` row pointing
at it. Training then never runs the DCAE encoder, the text encoder or the SSL models: see
benchmarks/bench_train.py for what that saves.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from songmill.annotate.base import RUNTIME, Stage, StageConfig, StageUnavailable, Track
from songmill.data_schema.shards import shard_bytes, shard_relpath
from songmill.data_schema.tables import TABLES
from songmill.model.config import LATENT_FPS, SAMPLE_RATE

NONE = "none"  # a model setting of "none" leaves that feature out
# Tables whose current rows give captions, lyrics and the instrumental flag, when they exist.
OPTIONAL_INPUTS = (
    "music",
    "captions",
    "transcripts",
    "lyrics_matches",
    "separation",
    "lyric_sections",
)


@dataclass
class FeaturesConfig(StageConfig):
    # DCAE checkpoint: a `songmill train dcae` run dir or checkpoint dir (EMA weights preferred).
    dcae_checkpoint: str = ""
    # Local model dirs (or Hugging Face ids already in the local cache). "none" skips a feature.
    text_encoder: str = "google/umt5-base"  # "tiny-random" builds the tiny preset's encoder
    mert: str = "m-a-p/MERT-v1-330M"
    mhubert: str = "utter-project/mHuBERT-147"
    # "resemblyzer": the 256-d voice encoder from its PyPI wheel (annotate/speaker.py), offline
    speaker: str = "microsoft/wavlm-base-plus-sv"
    # MERT ships its model code with its weights: loading it runs that (local) code.
    trust_remote_code: bool = True
    mert_layer: int = -1  # hidden_states index used as the REPA target
    mhubert_layer: int = -1
    # SSL models see the track in chunks of this length: MERT 5 s at 24 kHz and mHuBERT 30 s at
    # 16 kHz, as ACE-Step's trainer.py computes its REPA targets (ssl_chunk_s: mHuBERT and others)
    mert_chunk_s: float = 5.0
    ssl_chunk_s: float = 30.0
    lyric_tokenizer: str = ""  # tokenizer.json from `songmill train tokenizer`; "" = UTF-8 bytes
    max_duration_s: float = 600.0  # longer tracks: features of the first max_duration_s only
    batch_size: int = field(default=4, metadata=RUNTIME)


def _registered_inputs() -> tuple[str, ...]:
    return tuple(t for t in OPTIONAL_INPUTS if t in TABLES)


# -- captions and lyrics from the other stages' rows -------------------------------------------

_NOT_CAPTIONS = {
    "track_id",
    "stage_version",
    "config_hash",
    "run_id",
    "created_at",
    "model",
    "language",
}


def caption_texts(track: Track) -> dict[str, str]:
    """Caption style -> text. Every text column of the `captions` row is a style; a `tags` style
    is always derived from the music row (BPM, key), so tracks without captions still train."""
    styles: dict[str, str] = {}
    row = track.inputs.get("captions") or {}
    for name, value in row.items():
        if name in _NOT_CAPTIONS or value is None:
            continue
        if isinstance(value, str) and value.strip():
            styles[name.removeprefix("caption_")] = value.strip()
        elif isinstance(value, dict):  # a map/struct of style -> text
            styles.update({str(k): str(v) for k, v in value.items() if v})
    if "tags" not in styles:
        styles["tags"] = tag_text(track)
    return styles


def tag_text(track: Track) -> str:
    music = track.inputs.get("music") or {}
    parts = []
    if music.get("bpm"):
        parts.append(f"{round(float(music['bpm']))} bpm")
    if music.get("keyscale"):
        parts.append(str(music["keyscale"]))
    if music.get("time_signature"):
        parts.append(f"{music['time_signature']} time")
    if is_instrumental(track):
        parts.append("instrumental")
    return ", ".join(parts) or "music"


def is_instrumental(track: Track) -> bool:
    return bool((track.inputs.get("separation") or {}).get("is_instrumental"))


def lyrics_text(track: Track, lyrics_by_id: dict[str, str] | None = None) -> str:
    """The tokens stage's section-tagged lyric (`[instrumental]` for instrumentals) when it ran;
    else the matched canonical lyric, else the transcript (unless flagged as a hallucination),
    else "" (instrumental)."""
    sections = track.inputs.get("lyric_sections") or {}
    if sections.get("lyrics_source") not in (None, "none") and isinstance(
        sections.get("lyrics_tagged"), str
    ):
        return sections["lyrics_tagged"]
    if is_instrumental(track):
        return ""
    match = track.inputs.get("lyrics_matches") or {}
    if isinstance(match.get("lyrics"), str) and match["lyrics"].strip():  # text carried inline
        return match["lyrics"]
    if match.get("lyric_id") and match.get("matched") is not False and lyrics_by_id:
        text = lyrics_by_id.get(match["lyric_id"])
        if text:
            return text
    transcript = track.inputs.get("transcripts") or {}
    text = transcript.get("text")
    if isinstance(text, str) and not transcript.get("hallucination"):
        return text
    return ""


def lyric_lines(track: Track, lyrics: str) -> list[dict[str, Any]]:
    """Timed lines of `lyrics` when it is the transcript, plain or section-tagged by the tokens
    stage: Whisper's segments as {"start", "end", "text"} (a tag such as `[chorus]` goes in front
    of the segment it starts in), so the trainer can give a crop of the audio the lyrics sung in
    it. [] when the lyrics have no timestamps (a matched catalog lyric) or the segments do not
    make up the text."""
    transcript = track.inputs.get("transcripts") or {}
    segments = [
        s
        for s in transcript.get("segments") or []
        if s and s.get("text") and s.get("start") is not None
    ]
    if not lyrics or not segments:
        return []
    words = lyrics.split()
    tags_before: dict[int, list[str]] = {}  # word index -> section tags just before it
    plain: list[str] = []
    for word in words:
        if word.startswith("[") and word.endswith("]"):
            tags_before.setdefault(len(plain), []).append(word)
        else:
            plain.append(word)
    if " ".join(s["text"] for s in segments).split() != plain:
        return []
    lines, first_word = [], 0
    for segment in segments:
        count = len(segment["text"].split())
        tags = [t for i in range(first_word, first_word + count) for t in tags_before.get(i, [])]
        text = "\n".join([*tags, segment["text"].strip()])
        lines.append(
            {
                "start": float(segment["start"]),
                "end": float(segment.get("end") or segment["start"]),
                "text": text,
            }
        )
        first_word += count
    return lines


def lyrics_untimed(lyrics: str, lines: list[dict[str, Any]]) -> bool:
    """Sung words (not only section tags such as `[instrumental]`) without timestamps: the
    trainer crops such a track from its start, where its lyrics begin."""
    return not lines and any(not (w.startswith("[") and w.endswith("]")) for w in lyrics.split())


def corpus_lyrics_by_id(corpus) -> dict[str, str]:
    """lyric_id -> text of the corpus lyrics catalog (`songmill lyrics add`), newest row wins."""
    if corpus is None:
        return {}
    rows = corpus.sql("SELECT lyric_id, lyrics FROM lyrics WHERE lyrics IS NOT NULL").to_pylist()
    return {r["lyric_id"]: r["lyrics"] for r in rows}


def corpus_lyric_texts(corpus: Any) -> list[str]:
    """Every lyric text the corpus knows: the lyrics catalog and the (non-hallucinated)
    transcripts (what the lyric tokenizer is trained on)."""
    texts = list(corpus_lyrics_by_id(corpus).values())
    transcripts = corpus.sql(
        "SELECT text FROM transcripts WHERE text IS NOT NULL AND NOT coalesce(hallucination, false)"
    )
    texts += transcripts.column("text").to_pylist()
    return [t for t in texts if t and t.strip()]


def vocals_uri(track: Track) -> str | None:
    row = track.inputs.get("separation") or {}
    return row.get("vocals_uri") or None


# -- model loading --------------------------------------------------------------------------------


def _unavailable(what: str, setting: str, path: str, hint: str) -> StageUnavailable:
    return StageUnavailable(
        f"features: {what} weights not found at {path!r}. {hint} Then set "
        f'`--set features.{setting}=DIR` (or `{setting} = "DIR"` under [features] in songmill.toml), '
        + (
            f'or `{setting} = "tiny-random"` offline (a tiny text encoder with random weights; the DiT needs one).'
            if setting == "text_encoder"
            else f'or `{setting} = "none"` to leave this feature out.'
        )
    )


# The feature models, (setting, what, Hugging Face id); and what runs offline instead of each:
# the tiny preset's text encoder built from random weights, no REPA target, no speaker vector
# (what `songmill demo` trains with).
FEATURE_MODELS = (
    ("text_encoder", "text encoder (umT5)", "google/umt5-base"),
    ("mert", "MERT", "m-a-p/MERT-v1-330M"),
    ("mhubert", "mHuBERT", "utter-project/mHuBERT-147"),
    ("speaker", "speaker x-vector (WavLM)", "microsoft/wavlm-base-plus-sv"),
)
OFFLINE_FEATURE_SETTINGS = {
    "text_encoder": "tiny-random",
    "mert": NONE,
    "mhubert": NONE,
    "speaker": NONE,
}


def offline_settings_hint(settings: list[str] | None = None) -> str:
    """`--set features.text_encoder=tiny-random --set features.mert=none ...` for these settings."""
    return " ".join(
        f"--set features.{k}={v}"
        for k, v in OFFLINE_FEATURE_SETTINGS.items()
        if settings is None or k in settings
    )


def uses_resemblyzer(speaker: str) -> bool:
    """`features.speaker` names Resemblyzer: the word, or a folder songmill converted it into."""
    return speaker == "resemblyzer" or os.path.isfile(
        os.path.join(speaker, "voice_encoder.safetensors")
    )


def missing_feature_models(cfg: FeaturesConfig) -> list[tuple[str, str, str, str]]:
    """Every feature model the settings name that is not on this machine, found without loading
    any: (setting, what, where looked, Hugging Face id)."""
    missing = []
    for setting, what, hub in FEATURE_MODELS:
        path = getattr(cfg, setting)
        if path in (NONE, "tiny-random" if setting == "text_encoder" else NONE):
            continue
        if setting == "speaker" and uses_resemblyzer(path):
            from songmill.annotate.weights import REGISTRY, locate

            if not locate(REGISTRY["resemblyzer"], None if path == "resemblyzer" else path).present:
                missing.append(
                    (
                        setting,
                        "speaker encoder (Resemblyzer; `songmill models fetch resemblyzer` builds it)",
                        path,
                        "-",
                    )
                )
            continue
        try:
            _local_pretrained_dir(path, what, setting, hub)
        except StageUnavailable:
            missing.append((setting, what, path, hub))
    return missing


def check_feature_models(cfg: FeaturesConfig) -> None:
    """Refuse, before any model loads, settings naming absent models: all of them in one message,
    with how to fetch each and the settings that run offline."""
    missing = missing_feature_models(cfg)
    if not missing:
        return
    names = "; ".join(
        f"{what} at {path!r} (`--set features.{setting}=DIR` after `hf download {hub} --local-dir DIR`)"
        for setting, what, path, hub in missing
    )
    raise StageUnavailable(
        f"features: {len(missing)} model(s) not on this machine: {names}. Offline, without them: "
        f"{offline_settings_hint([m[0] for m in missing])} (a tiny random text encoder and no REPA / "
        "speaker targets, as `songmill demo` trains; the same keys under [features] in songmill.toml)"
    )


def _local_pretrained_dir(path: str, what: str, setting: str, hub_id_hint: str) -> str:
    """A local dir (or a hub id resolved from the local cache only) holding config.json."""
    if os.path.isdir(path):
        if not os.path.exists(os.path.join(path, "config.json")):
            raise _unavailable(
                what, setting, path, f"{os.path.join(path, 'config.json')} is missing."
            )
        return path
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(path, local_files_only=True)
    except Exception:
        raise _unavailable(
            what,
            setting,
            path,
            f"Download them where there is network: `hf download {hub_id_hint} --local-dir DIR`.",
        ) from None


class SSLTarget:
    """A self-supervised speech / music encoder (MERT, mHuBERT) giving REPA targets."""

    def __init__(self, name: str, path: str, layer: int, trust_remote_code: bool, device: str):
        import torch
        from transformers import (
            AutoConfig,
            AutoFeatureExtractor,
            AutoModel,
            Wav2Vec2FeatureExtractor,
        )

        self.name, self.layer, self.device = name, layer, device
        self.model = AutoModel.from_pretrained(
            path, trust_remote_code=trust_remote_code, local_files_only=True
        )
        self.model.eval().requires_grad_(False).to(device)
        config = AutoConfig.from_pretrained(
            path, trust_remote_code=trust_remote_code, local_files_only=True
        )
        try:
            self.extractor = AutoFeatureExtractor.from_pretrained(
                path, trust_remote_code=trust_remote_code, local_files_only=True
            )
        except (OSError, ValueError):  # no preprocessor_config.json: the wav2vec2 defaults
            self.extractor = Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True)
        self.sample_rate = int(self.extractor.sampling_rate)
        self.fps = self.sample_rate / float(np.prod(config.conv_stride))
        self.dim = int(config.hidden_size)
        self._torch = torch

    def __call__(self, mono: np.ndarray, chunk_s: float):
        """(samples,) mono at self.sample_rate -> (frames, dim) float32 on CPU."""
        torch = self._torch
        chunk = max(int(chunk_s * self.sample_rate), 400)
        outputs = []
        for start in range(0, len(mono), chunk):
            piece = mono[start : start + chunk]
            if len(piece) < 400:  # shorter than one conv receptive field: pad with silence
                piece = np.pad(piece, (0, 400 - len(piece)))
            inputs = self.extractor(piece, sampling_rate=self.sample_rate, return_tensors="pt")
            with torch.no_grad():
                out = self.model(inputs["input_values"].to(self.device), output_hidden_states=True)
            outputs.append(out.hidden_states[self.layer][0].float().cpu())
        frames = torch.cat(outputs)
        expected = max(1, int(round(len(mono) / self.sample_rate * self.fps)))
        return frames[:expected]


class SpeakerEmbedder:
    """x-vector (512-d) of the vocals through a transformers audio x-vector model (WavLM-SV)."""

    def __init__(self, path: str, device: str):
        import torch
        from transformers import (
            AutoFeatureExtractor,
            AutoModelForAudioXVector,
            Wav2Vec2FeatureExtractor,
        )

        self.model = (
            AutoModelForAudioXVector.from_pretrained(path, local_files_only=True).eval().to(device)
        )
        try:
            self.extractor = AutoFeatureExtractor.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError):
            self.extractor = Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True)
        self.sample_rate = int(self.extractor.sampling_rate)
        self.dim = int(self.model.config.xvector_output_dim)
        self.device = device
        self._torch = torch

    def __call__(self, mono: np.ndarray, max_s: float = 30.0):
        piece = mono[: int(max_s * self.sample_rate)]
        if len(piece) < self.sample_rate:
            piece = np.pad(piece, (0, self.sample_rate - len(piece)))
        inputs = self.extractor(piece, sampling_rate=self.sample_rate, return_tensors="pt")
        with self._torch.no_grad():
            out = self.model(inputs["input_values"].to(self.device))
        return out.embeddings[0].float().cpu()


def build_text_encoder(spec: str, device: str = "cpu"):
    """The frozen text encoder named by a features / checkpoint setting."""
    from songmill.model.encoders import TextEncoder

    if spec == "tiny-random":
        return TextEncoder.tiny_random().to(device)
    return TextEncoder.from_pretrained(spec).to(device)


def load_dcae_for_features(path: str, device: str):
    """The frozen DCAE of a training run / checkpoint (EMA weights when present) or of a plain
    directory holding dcae.safetensors + dcae.json; with its id and resolved directory."""
    from songmill.model.dcae import MusicDCAE
    from songmill.model.weights import CheckpointError, load_module, resolve_checkpoint

    if os.path.exists(os.path.join(path, "dcae.safetensors")):
        ckpt = path
    else:
        try:
            ckpt = resolve_checkpoint(path)
        except CheckpointError as exc:
            raise StageUnavailable(
                f"features: no DCAE checkpoint at {path!r} ({exc}). Train one with "
                "`songmill train dcae --manifest FILE` and set `--set features.dcae_checkpoint=RUN_DIR`."
            ) from None
    name = "dcae_ema" if os.path.exists(os.path.join(ckpt, "dcae_ema.safetensors")) else "dcae"
    dcae = load_module(MusicDCAE, ckpt, name, device=device)
    with open(os.path.join(ckpt, f"{name}.safetensors"), "rb") as f:
        dcae_id = hashlib.sha256(f.read()).hexdigest()[:16]
    return dcae.eval().requires_grad_(False), dcae_id, os.path.abspath(ckpt)


# -- the stage --------------------------------------------------------------------------------


class FeaturesStage(Stage):
    name = "features"
    version = 1
    table = "features"
    reads = _registered_inputs()
    resources = "gpu"
    config_class = FeaturesConfig

    def __init__(self, config: FeaturesConfig | None = None, corpus=None):
        super().__init__(config)
        self.corpus = corpus  # where the shards go, and the lyrics catalog
        self.extractors: FeatureExtractors | None = None

    def setup(self) -> None:
        cfg: FeaturesConfig = self.config
        if self.corpus is None:
            raise StageUnavailable(
                "the features stage needs its corpus (stage.corpus) to write the shards"
            )
        if not cfg.dcae_checkpoint:
            raise StageUnavailable(
                "features: no DCAE checkpoint configured. Train one with `songmill train dcae "
                "--manifest FILE --run-dir RUN`, then `--set features.dcae_checkpoint=RUN`."
            )
        self.extractors = FeatureExtractors.from_config(cfg)
        self.extractors.lyrics_by_id = corpus_lyrics_by_id(self.corpus)

    def process_track(self, track: Track) -> dict[str, Any]:
        if self.extractors is None:
            self.setup()
        tensors, metadata = self.extractors.track_features(track)
        blob = shard_bytes(tensors, metadata)
        sha = hashlib.sha256(blob).hexdigest()
        url = self.corpus.write_bytes(shard_relpath(sha), blob)
        ext = self.extractors
        return {
            "features_url": url,
            "features_sha256": sha,
            "features_bytes": len(blob),
            "latent_frames": int(metadata["latent_frames"]),
            "latent_fps": LATENT_FPS,
            "caption_styles": sorted(metadata["captions"]),
            "lyric_tokens": int(tensors["lyrics"].numel()) if "lyrics" in tensors else 0,
            "lyric_tokenizer": ext.tokenizer.name,
            "repa_targets": sorted(metadata["repa_fps"]),
            "has_speaker": "speaker" in tensors,
            "dcae_id": ext.dcae_id,
            "text_encoder_id": ext.text_encoder_spec,
        }


class FeatureExtractors:
    """The frozen models and the per-track computation (also what the benchmark's
    "compute every step" baseline runs)."""

    def __init__(self, cfg: FeaturesConfig, device: str):
        self.cfg, self.device = cfg, device
        self.dcae = None
        self.dcae_id = ""
        self.dcae_path = ""
        self.mel = None
        self.text_encoder = None
        self.text_encoder_spec = NONE
        self.ssl: dict[str, SSLTarget] = {}
        self.speaker: SpeakerEmbedder | None = None
        self.tokenizer = None
        self.lyrics_by_id: dict[str, str] = {}

    @classmethod
    def from_config(cls, cfg: FeaturesConfig) -> FeatureExtractors:
        import torch
        from songmill.model.lyric_tokens import LyricTokenizer
        from songmill.model.mel import MelSpectrogram

        check_feature_models(cfg)  # every absent model named at once, before the DCAE loads
        device = (
            cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        )
        ext = cls(cfg, device)
        ext.dcae, ext.dcae_id, ext.dcae_path = load_dcae_for_features(cfg.dcae_checkpoint, device)
        ext.mel = MelSpectrogram().to(device)
        if cfg.text_encoder != NONE:
            if cfg.text_encoder != "tiny-random":
                _local_pretrained_dir(
                    cfg.text_encoder, "text encoder (umT5)", "text_encoder", "google/umt5-base"
                )
            ext.text_encoder = build_text_encoder(cfg.text_encoder, device)
            ext.text_encoder_spec = cfg.text_encoder
        for name, path, layer, hub in (
            ("mert", cfg.mert, cfg.mert_layer, "m-a-p/MERT-v1-330M"),
            ("mhubert", cfg.mhubert, cfg.mhubert_layer, "utter-project/mHuBERT-147"),
        ):
            if path != NONE:
                local = _local_pretrained_dir(path, name, name, hub)
                ext.ssl[name] = SSLTarget(name, local, layer, cfg.trust_remote_code, device)
        if uses_resemblyzer(cfg.speaker):
            from songmill.annotate.speaker import ResemblyzerEmbedder

            ext.speaker = ResemblyzerEmbedder.load(cfg.speaker, device)
        elif cfg.speaker != NONE:
            local = _local_pretrained_dir(
                cfg.speaker, "speaker x-vector", "speaker", "microsoft/wavlm-base-plus-sv"
            )
            ext.speaker = SpeakerEmbedder(local, device)
        try:
            ext.tokenizer = LyricTokenizer.load(cfg.lyric_tokenizer)
        except FileNotFoundError as exc:
            raise StageUnavailable(f"features: {exc}") from None
        return ext

    def latent(self, stereo_44k):
        """(2, samples) float32 tensor -> (8, 16, F) latent, F = ceil(mel frames / 8)."""
        import torch

        with torch.no_grad():
            mel = self.mel(stereo_44k.to(self.device).unsqueeze(0))
            return self.dcae.encode(mel)[0].float().cpu()

    def track_features(self, track: Track) -> tuple[dict[str, Any], dict[str, Any]]:
        import torch

        cfg = self.cfg
        audio, sr = track.audio(SAMPLE_RATE)
        audio = audio[: int(cfg.max_duration_s * sr)]
        stereo = audio if audio.shape[1] >= 2 else np.repeat(audio, 2, axis=1)
        tensors: dict[str, torch.Tensor] = {}
        latent = self.latent(torch.from_numpy(np.ascontiguousarray(stereo[:, :2].T)))
        tensors["latent"] = latent.half()
        captions = caption_texts(track)
        if self.text_encoder is not None:
            for style, text in captions.items():
                with torch.no_grad():
                    emb, mask = self.text_encoder([text])
                tensors[f"text.{style}"] = emb[0][mask[0].bool()].float().cpu().half()
        lyrics = lyrics_text(track, self.lyrics_by_id)
        tensors["lyrics"] = torch.tensor(self.tokenizer.encode_ids(lyrics), dtype=torch.int32)
        repa_fps = {}
        duration = len(audio) / sr
        for name, model in self.ssl.items():
            mono, _ = track.audio(model.sample_rate, mono=True)
            mono = mono[: int(duration * model.sample_rate)]
            chunk_s = cfg.mert_chunk_s if name == "mert" else cfg.ssl_chunk_s
            tensors[f"repa.{name}"] = model(mono, chunk_s).half()
            repa_fps[name] = model.fps
        speaker_dim = 512
        if self.speaker is not None:
            speaker_dim = self.speaker.dim
            if lyrics and not is_instrumental(track):
                vocals = vocals_uri(track)
                source = Track({"track_id": track.track_id, "uri": vocals}) if vocals else track
                mono, _ = source.audio(self.speaker.sample_rate, mono=True)
                tensors["speaker"] = self.speaker(mono).half()
        metadata = {
            "lyric_lines": (lines := lyric_lines(track, lyrics)),
            "lyrics_untimed": lyrics_untimed(lyrics, lines),
            "latent_frames": int(latent.shape[-1]),
            "latent_fps": LATENT_FPS,
            "captions": captions,
            "repa_fps": repa_fps,
            "speaker_dim": speaker_dim,
            "lyrics_text_chars": len(lyrics),
            "lyric_tokenizer": self.tokenizer.name,
            "lyric_tokenizer_path": self.tokenizer.source,
            "lyric_vocab_size": self.tokenizer.vocab_size,
            "dcae_id": self.dcae_id,
            "dcae_checkpoint": self.dcae_path,
            "text_encoder": self.text_encoder_spec,
        }
        return tensors, metadata
