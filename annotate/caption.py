"""`caption` stage: audio-LM descriptions in several prompt styles, and a recaption whose numbers
come from the measurements.

Backends (`caption.backend`):
- `qwen2-audio`: Qwen2-Audio-7B-Instruct through transformers (`Qwen2AudioProcessor` +
  `Qwen2AudioForConditionalGeneration`);
- `qwen2.5-omni`: the thinker of Qwen2.5-Omni (`Qwen2_5OmniThinkerForConditionalGeneration`; a
  full Omni checkpoint loads as `Qwen2_5OmniForConditionalGeneration` with its talker disabled).
  Its processor needs torchvision's video processor, so the audio part of it is done here: the
  checkpoint's own WhisperFeatureExtractor and tokenizer, and `<|AUDIO|>` expanded to the
  encoder's output length exactly as `Qwen2_5OmniProcessor` does;
- `tags`: the musicnn tagger (annotate/tagger.py; weights converted from the `musicnn` wheel,
  offline): its genre / mood / instrument tags, normalised into the caption vocabulary, feed the
  `tags` style and the recaption; its vocal / no-vocal tags are checked against `separate`;
- `auto` (the default): the audio LM (qwen2-audio) where its weights are present, else `tags`, so
  an offline install writes captions with real content. Where both are present the tagger runs
  beside the LM and a genre disagreement between them is listed in `contradictions`;
- `recaption`: no audio LM, only the recaption from the measurements (offline, no weights).

Every prompt style (tags; a one-sentence description; a detailed description; use-case) is asked
of every track of a batch, `batch_size` prompts per `generate` call (left padding, greedy), bf16 on
CUDA. The LM hears `clip_s` seconds from the middle of the track (the models were trained on
30 s clips). The tags answer is parsed into genre / mood / instrument lists, normalised to one
spelling per term (`normalise_tag`). The recaption is built from the measurements (BPM, key, time
signature, duration, language, vocal or instrumental, structure) plus those tags, so no number in
it comes from the LM; any number or claim in the LM's own text that disagrees with a measurement
is listed in `contradictions` and the row is flagged.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from songmill.annotate.base import RUNTIME, Stage, StageConfig, StageUnavailable, Track
from songmill.annotate.key import sharp_name
from songmill.annotate.weights import REGISTRY, locate, missing_message
from songmill.data_schema.labels import CAPTION_STYLES

SAMPLE_RATE = 16000
BACKEND_WEIGHTS = {"qwen2-audio": "qwen2-audio-7b-instruct", "qwen2.5-omni": "qwen2.5-omni-7b"}

PROMPTS = {
    "tags": (
        "Tag this music. Answer with exactly three lines: 'genre: ...', 'mood: ...', "
        "'instruments: ...', each a few lowercase words separated by commas."
    ),
    "description": "Describe this music in one sentence.",
    "detailed": (
        "Describe this music in detail: its genre, mood, instrumentation, vocals, rhythm and "
        "production, in three or four sentences."
    ),
    "use_case": "In one sentence, say what this music would suit, for example a film scene, a workout, a cafe or an advert.",
}
MAX_NEW_TOKENS = {"tags": 48, "description": 64, "detailed": 192, "use_case": 64}
OMNI_SYSTEM = (
    "You are Qwen, a virtual human developed by the Qwen Team, Alibaba Group, capable of "
    "perceiving auditory and visual inputs, as well as generating text and speech."
)


@dataclass
class CaptionConfig(StageConfig):
    backend: str = "auto"  # auto | qwen2-audio | qwen2.5-omni | tags | recaption
    model: str = ""  # folder or hub id (cache only); "" = the backend's release
    styles: tuple[str, ...] = CAPTION_STYLES
    clip_s: float = 30.0
    max_new_tokens_scale: float = 1.0
    # musicnn tagger folders ("" = the songmill-assembled copies; tagger_msd "none" leaves it out)
    tagger: str = ""
    tagger_msd: str = ""
    tagger_threshold: float = 0.1
    tagger_max_s: float = 600.0
    batch_size: int = field(default=8, metadata=RUNTIME)
    dtype: str = field(
        default="auto", metadata=RUNTIME
    )  # auto (bf16 on CUDA, fp32 on CPU) | bf16 | fp16 | fp32


# -- tag vocabulary ---------------------------------------------------------------------------------

# One spelling per term: variants -> canonical.
_SYNONYMS = {
    "hip hop": "hip-hop", "hiphop": "hip-hop", "rap": "hip-hop", "trap": "trap",
    "r and b": "r&b", "rnb": "r&b", "r'n'b": "r&b", "rhythm and blues": "r&b",
    "edm": "electronic", "electronica": "electronic", "electro": "electronic", "electronic dance music": "electronic",
    "dance": "dance", "techno": "techno", "house": "house", "drum and bass": "drum and bass", "dnb": "drum and bass",
    "drum n bass": "drum and bass", "d&b": "drum and bass", "rock and roll": "rock and roll", "rock n roll": "rock and roll",
    "pop music": "pop", "rock music": "rock", "jazzy": "jazz", "bluesy": "blues", "classical music": "classical",
    "lofi": "lo-fi", "lo fi": "lo-fi", "k pop": "k-pop", "kpop": "k-pop", "j pop": "j-pop", "jpop": "j-pop",
    "singer songwriter": "singer-songwriter", "synth pop": "synth-pop", "synthpop": "synth-pop",
    "happy": "happy", "joyful": "happy", "cheerful": "happy", "upbeat": "upbeat", "energetic": "energetic",
    "high energy": "energetic", "sad": "sad", "melancholy": "melancholic", "melancholic": "melancholic",
    "calm": "calm", "relaxing": "relaxed", "relaxed": "relaxed", "chill": "relaxed", "chilled": "relaxed",
    "dark": "dark", "aggressive": "aggressive", "romantic": "romantic", "dreamy": "dreamy", "epic": "epic",
    "guitars": "guitar", "electric guitars": "electric guitar", "acoustic guitars": "acoustic guitar",
    "drum": "drums", "drum kit": "drums", "drumkit": "drums", "percussions": "percussion",
    "keyboard": "keyboards", "keys": "keyboards", "pianos": "piano", "synth": "synthesizer", "synths": "synthesizer",
    "synthesizers": "synthesizer", "bass guitar": "bass", "electric bass": "bass", "basses": "bass",
    "strings section": "strings", "string": "strings", "violins": "violin", "vocal": "vocals", "voice": "vocals",
    "singing": "vocals", "female vocal": "female vocals", "male vocal": "male vocals", "horns": "brass",
    "trumpets": "trumpet", "saxophones": "saxophone", "sax": "saxophone",
}  # fmt: skip
GENRES = frozenset({
    "pop", "rock", "hip-hop", "trap", "r&b", "electronic", "dance", "techno", "house", "drum and bass", "jazz",
    "blues", "classical", "country", "folk", "metal", "punk", "funk", "soul", "reggae", "latin", "lo-fi",
    "ambient", "k-pop", "j-pop", "indie", "disco", "gospel", "singer-songwriter", "synth-pop", "rock and roll",
    "ballad", "soundtrack", "world", "waltz",
})  # fmt: skip
MOODS = frozenset({
    "happy", "upbeat", "energetic", "sad", "melancholic", "calm", "relaxed", "dark", "aggressive", "romantic",
    "dreamy", "epic", "uplifting", "nostalgic", "tense", "peaceful", "playful", "emotional", "groovy",
})  # fmt: skip
INSTRUMENTS = frozenset({
    "guitar", "electric guitar", "acoustic guitar", "drums", "percussion", "bass", "piano", "keyboards",
    "synthesizer", "strings", "violin", "cello", "brass", "trumpet", "saxophone", "flute", "organ",
    "vocals", "female vocals", "male vocals", "choir", "drum machine", "harp", "ukulele", "banjo",
})  # fmt: skip


def normalise_tag(term: str) -> str:
    """Lowercase, plain spacing, no edge punctuation, one spelling per known term."""
    text = term.lower().replace("_", " ").replace("–", "-")
    text = re.sub(r"[\"'`.;:!?()\[\]{}]+$|^[\"'`.;:!?()\[\]{}]+", "", text.strip())
    text = re.sub(r"\s+", " ", text).strip(" -")
    return _SYNONYMS.get(text, _SYNONYMS.get(text.replace("-", " "), text))


_AND_TERMS = ("drum and bass", "rock and roll", "rhythm and blues", "r and b")


def _split_terms(text: str) -> list[str]:
    """Comma / slash / semicolon / 'and' separated terms; terms that contain 'and' stay whole."""
    lowered = text.lower()
    for term in _AND_TERMS:
        lowered = lowered.replace(term, term.replace(" and ", "\x00"))
    parts = re.split(r",|/|;|\band\b", lowered)
    return [
        t for t in (normalise_tag(p.replace("\x00", " and ")) for p in parts) if 0 < len(t) <= 40
    ]


def parse_tags(texts: Iterable[str]) -> dict[str, list[str]]:
    """genre / mood / instrument lists from the tags answer ('genre: ...' lines) plus any known
    vocabulary term found in the other styles' text."""
    found: dict[str, list[str]] = {"genres": [], "moods": [], "instruments": []}
    keys = {"genre": "genres", "genres": "genres", "style": "genres", "mood": "moods", "moods": "moods",
            "instrument": "instruments", "instruments": "instruments", "instrumentation": "instruments"}  # fmt: skip
    vocab = {"genres": GENRES, "moods": MOODS, "instruments": INSTRUMENTS}
    for text in texts:
        for line in (text or "").splitlines():
            head, sep, rest = line.partition(":")
            column = keys.get(head.strip().lower().strip("-* "))
            if sep and column:
                found[column].extend(_split_terms(rest))
        lowered = " " + re.sub(r"[^a-z&'\- ]+", " ", (text or "").lower()) + " "
        for column, words in vocab.items():
            for word in words:
                if f" {word} " in lowered:
                    found[column].append(word)
    return {k: list(dict.fromkeys(v)) for k, v in found.items()}


def tag_distribution(
    rows: Iterable[dict[str, Any]], column: str = "genres"
) -> tuple[Counter, str | None]:
    """Counts of each tag over caption rows, and a warning when one tag covers over half the
    tracks (a caption model collapsing to one genre)."""
    counts: Counter = Counter()
    tracks = 0
    for row in rows:
        tags = row.get(column) or []
        tracks += 1
        counts.update(set(tags))
    warning = None
    if tracks >= 4 and counts:
        tag, n = counts.most_common(1)[0]
        if n / tracks > 0.5:
            warning = f"{column}: {tag!r} tags {n}/{tracks} tracks ({100 * n / tracks:.0f} %): the captions may have collapsed to one {column[:-1]}"
    return counts, warning


# -- measurements, recaption and contradictions -----------------------------------------------------

_LANGUAGE_NAMES = {
    "en": "English", "es": "Spanish", "fr": "French", "de": "German", "it": "Italian", "pt": "Portuguese",
    "zh": "Chinese", "ja": "Japanese", "ko": "Korean", "ru": "Russian", "nl": "Dutch", "sv": "Swedish",
    "pl": "Polish", "tr": "Turkish", "ar": "Arabic", "hi": "Hindi",
}  # fmt: skip


def measurements(track: Track) -> dict[str, Any]:
    """The facts the recaption states, from the other stages' rows (None when unmeasured)."""
    music = track.inputs.get("music") or {}
    separation = track.inputs.get("separation") or {}
    transcript = track.inputs.get("transcripts") or {}
    structure = track.inputs.get("structure") or {}
    instrumental = separation.get("is_instrumental")
    if instrumental is None and transcript:
        instrumental = (
            not (transcript.get("text") or "").strip() or transcript.get("input") == "none"
        )
    language = (
        transcript.get("language")
        if not instrumental and not transcript.get("hallucination")
        else None
    )
    return {
        "bpm": float(music["bpm"]) if music.get("bpm") else None,
        "keyscale": music.get("keyscale") or None,
        "time_signature": music.get("time_signature") or None,
        "duration_s": track.duration_s or None,
        "instrumental": instrumental,
        "language": language,
        "form": structure.get("form") or None,
    }


def _pick(options: Sequence[str], seed: str, salt: str) -> str:
    digest = hashlib.sha256(f"{seed}:{salt}".encode()).digest()
    return options[digest[0] % len(options)]


def _duration_phrase(seconds: float) -> str:
    if seconds < 90:
        return f"{round(seconds)} seconds long"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}:{rest:02d} long"


def recaption(facts: dict[str, Any], tags: dict[str, list[str]], seed: str) -> str:
    """A natural-language caption: the LM's genre / mood / instrument words, the measured numbers."""
    genres, moods, instruments = (
        tags.get("genres") or [],
        tags.get("moods") or [],
        tags.get("instruments") or [],
    )
    mood = f"{moods[0]} " if moods else ""
    if genres:
        subject = (
            f"{mood}{' and '.join(genres[:2])} {_pick(('track', 'piece', 'song'), seed, 'noun')}"
        )
    else:
        subject = f"{mood}piece of music"
    article = "An" if subject[:1].lower() in "aeiou" else "A"
    parts = [f"{article} {subject}"]
    if instruments:
        listed = [i for i in instruments if "vocal" not in i][:3]
        if listed:
            parts.append(
                f"with {', '.join(listed[:-1]) + ' and ' if len(listed) > 1 else ''}{listed[-1]}"
            )
    facts_text = []
    if facts.get("keyscale"):
        facts_text.append(f"in {facts['keyscale']}")
    if facts.get("bpm"):
        facts_text.append(f"at {round(facts['bpm'])} BPM")
    if facts.get("time_signature"):
        facts_text.append(f"in {facts['time_signature']} time")
    sentence = (
        " ".join(parts + facts_text[:1])
        + (", " + ", ".join(facts_text[1:]) if len(facts_text) > 1 else "")
        + "."
    )
    second = []
    if facts.get("instrumental") is True:
        second.append(
            _pick(
                ("It is instrumental", "There are no vocals", "An instrumental with no singing"),
                seed,
                "inst",
            )
        )
    elif facts.get("instrumental") is False:
        language = _LANGUAGE_NAMES.get(str(facts.get("language") or ""), None)
        second.append(f"It has {language} vocals" if language else "It has vocals")
    if facts.get("duration_s"):
        second.append(f"about {_duration_phrase(float(facts['duration_s']))}")
    text = sentence
    if second:
        joined = ", ".join(second)
        text += " " + joined[0].upper() + joined[1:] + "."
    if facts.get("form"):
        text += f" Form: {', '.join(dict.fromkeys(facts['form'].split())) if len(facts['form'].split()) > 8 else ', '.join(facts['form'].split())}."
    return text


def contradictions(texts: Iterable[str], facts: dict[str, Any]) -> list[str]:
    """Claims in the LM's text that disagree with a measurement."""
    found = []
    text = " ".join(t for t in texts if t)
    if facts.get("bpm"):
        for value in re.findall(
            r"(\d{2,3}(?:\.\d+)?)\s*(?:bpm|beats per minute)", text, flags=re.I
        ):
            said, measured = float(value), float(facts["bpm"])
            if not any(abs(said - measured * f) <= 0.08 * measured * f for f in (0.5, 1.0, 2.0)):
                found.append(f"bpm: caption says {value}, measured {measured:.0f}")
    if facts.get("keyscale"):
        for tonic, accidental, mode in re.findall(
            r"\b([A-G])([#b♯♭]?)[ -](major|minor)\b", text, flags=re.I
        ):
            name = tonic.upper() + accidental.replace("♯", "#").replace("♭", "b")
            said = f"{sharp_name(name)} {mode.lower()}"
            if said != facts["keyscale"]:
                found.append(f"key: caption says {said}, measured {facts['keyscale']}")
    if facts.get("time_signature"):
        for num, den in re.findall(
            r"\b(\d{1,2})/(\d{1,2})\b(?:\s*time|\s*meter|\s*metre|\s*signature)?", text
        ):
            if den in ("2", "4", "8") and f"{num}/{den}" != facts["time_signature"]:
                found.append(
                    f"time signature: caption says {num}/{den}, measured {facts['time_signature']}"
                )
    lowered = text.lower()
    if facts.get("instrumental") is True and re.search(
        r"\b(sings?|singer|sung|vocalist|lyrics|rapping|raps)\b", lowered
    ):
        found.append("vocals: caption mentions singing, measured instrumental")
    if facts.get("instrumental") is False and re.search(
        r"\b(instrumental (track|piece|song)|no vocals|without vocals)\b", lowered
    ):
        found.append("vocals: caption says instrumental, measured vocals")
    language = facts.get("language")
    if language and language in _LANGUAGE_NAMES:
        for code, name in _LANGUAGE_NAMES.items():
            if code != language and re.search(rf"\b{name.lower()}\b", lowered):
                found.append(f"language: caption says {name}, measured {_LANGUAGE_NAMES[language]}")
    return list(dict.fromkeys(found))


# -- audio LMs --------------------------------------------------------------------------------------


def middle_clip(audio: np.ndarray, seconds: float, sr: int = SAMPLE_RATE) -> np.ndarray:
    n = int(seconds * sr)
    if len(audio) <= n:
        return audio
    start = (len(audio) - n) // 2
    return audio[start : start + n]


def _audio_output_length(feature_frames: int) -> int:
    """Audio tokens for `feature_frames` mel frames (the Qwen2-Audio / Omni encoder's strides)."""
    frames = (feature_frames - 1) // 2 + 1
    return (frames - 2) // 2 + 1


class AudioLM:
    """One loaded audio LM: `generate(audios, prompts, max_new_tokens) -> texts`."""

    def __init__(self, backend: str, path: str, device: str, dtype: str):
        import torch

        self.backend, self.path, self.device = backend, path, device
        self.torch = torch
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype]
        with open(os.path.join(path, "config.json")) as f:
            model_type = json.load(f).get("model_type", "")
        if backend == "qwen2-audio":
            from transformers import Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor

            self.processor = Qwen2AudioProcessor.from_pretrained(path)
            self.tokenizer = self.processor.tokenizer
            self.model = Qwen2AudioForConditionalGeneration.from_pretrained(path, dtype=self.dtype)
        else:
            from transformers import AutoTokenizer, WhisperFeatureExtractor

            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.feature_extractor = WhisperFeatureExtractor.from_pretrained(path)
            if model_type == "qwen2_5_omni":  # the full release: keep the thinker, drop the talker
                from transformers import Qwen2_5OmniForConditionalGeneration

                full = Qwen2_5OmniForConditionalGeneration.from_pretrained(
                    path, dtype=self.dtype, enable_audio_output=False
                )
                self.model = full.thinker
            else:
                from transformers import Qwen2_5OmniThinkerForConditionalGeneration

                self.model = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(
                    path, dtype=self.dtype
                )
        self.tokenizer.padding_side = "left"
        self.model.eval().requires_grad_(False).to(device)

    def _qwen2_audio_inputs(self, audios: list[np.ndarray], prompts: list[str]):
        texts = [
            self.processor.apply_chat_template(
                [
                    {
                        "role": "user",
                        "content": [
                            {"type": "audio", "audio_url": "track"},
                            {"type": "text", "text": p},
                        ],
                    }
                ],
                add_generation_prompt=True,
                tokenize=False,
            )
            for p in prompts
        ]
        return self.processor(
            text=texts, audio=audios, sampling_rate=SAMPLE_RATE, return_tensors="pt", padding=True
        )

    def _omni_inputs(self, audios: list[np.ndarray], prompts: list[str]):
        features = self.feature_extractor(
            audios,
            sampling_rate=SAMPLE_RATE,
            return_attention_mask=True,
            padding="max_length",
            return_tensors="pt",
        )
        lengths = features["attention_mask"].sum(-1).tolist()
        texts = []
        for prompt, n_frames in zip(prompts, lengths, strict=True):
            audio = (
                "<|audio_bos|>"
                + "<|AUDIO|>" * _audio_output_length(int(n_frames))
                + "<|audio_eos|>"
            )
            texts.append(
                f"<|im_start|>system\n{OMNI_SYSTEM}<|im_end|>\n<|im_start|>user\n{audio}{prompt}<|im_end|>\n<|im_start|>assistant\n"
            )
        inputs = self.tokenizer(texts, return_tensors="pt", padding=True)
        inputs["input_features"] = features["input_features"]
        inputs["feature_attention_mask"] = features["attention_mask"]
        return inputs

    def generate(
        self, audios: list[np.ndarray], prompts: list[str], max_new_tokens: int
    ) -> list[str]:
        torch = self.torch
        inputs = (
            self._qwen2_audio_inputs(audios, prompts)
            if self.backend == "qwen2-audio"
            else self._omni_inputs(audios, prompts)
        )
        inputs = {k: (v.to(self.device) if hasattr(v, "to") else v) for k, v in inputs.items()}
        if "input_features" in inputs:
            inputs["input_features"] = inputs["input_features"].to(self.dtype)
        pad = (
            self.tokenizer.pad_token_id
            if self.tokenizer.pad_token_id is not None
            else self.tokenizer.eos_token_id
        )
        with torch.inference_mode():
            out = self.model.generate(
                **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad
            )
        sequences = out.sequences if hasattr(out, "sequences") else out
        new = sequences[:, inputs["input_ids"].shape[1] :]
        return [t.strip() for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]


def resolve_model(backend: str, model: str) -> str:
    spec = REGISTRY[BACKEND_WEIGHTS[backend]]
    where = locate(spec, model or None)
    if not where.present:
        raise StageUnavailable(missing_message(spec, where.looked, f"caption ({backend})"))
    return where.path


# -- the stage --------------------------------------------------------------------------------------


class CaptionStage(Stage):
    name: ClassVar[str] = "caption"
    version: ClassVar[int] = 1
    table: ClassVar[str] = "captions"
    reads: ClassVar[tuple[str, ...]] = ("music", "separation", "transcripts", "structure")
    resources: ClassVar[str] = "gpu"
    config_class = CaptionConfig
    config: CaptionConfig

    def __init__(self, config: CaptionConfig | None = None, corpus=None):
        super().__init__(config, corpus)
        self.lm: AudioLM | None = None
        self.tagger = None  # annotate.tagger.MusicTagger
        self.lm_backend = ""  # the LM backend in use ("" = none)

    def setup(self) -> None:
        cfg = self.config
        unknown = [s for s in cfg.styles if s not in PROMPTS]
        if unknown:
            raise StageUnavailable(
                f"caption.styles: unknown style(s) {unknown}; known: {list(PROMPTS)}"
            )
        if cfg.backend == "recaption" or self.lm is not None or self.tagger is not None:
            return
        if cfg.backend not in BACKEND_WEIGHTS and cfg.backend not in ("auto", "tags"):
            raise StageUnavailable(
                f"caption.backend must be auto, qwen2-audio, qwen2.5-omni, tags or recaption, not {cfg.backend!r}"
            )
        import torch

        device = (
            cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        )
        lm_backend = "qwen2-audio" if cfg.backend == "auto" else cfg.backend
        lm_path = None
        if lm_backend in BACKEND_WEIGHTS:
            try:
                lm_path = resolve_model(lm_backend, cfg.model)
            except StageUnavailable:
                if cfg.backend != "auto":
                    raise
        from songmill.annotate.tagger import MusicTagger

        try:
            self.tagger = MusicTagger.load(cfg.tagger, cfg.tagger_msd, device, cfg.tagger_threshold)
        except StageUnavailable:
            if lm_path is None:  # auto with neither, or tags without its weights
                raise
        if lm_path is None:
            return
        try:
            import transformers  # noqa: F401
        except ImportError:
            raise StageUnavailable(
                "transformers is not installed: pip install transformers"
            ) from None
        dtype = cfg.dtype if cfg.dtype != "auto" else ("bf16" if device == "cuda" else "fp32")
        self.lm = AudioLM(lm_backend, lm_path, device, dtype)
        self.lm_backend = lm_backend

    def describe(self, audios: list[np.ndarray]) -> list[dict[str, str]]:
        """Style -> LM text for each clip: every (clip, style) prompt, batch_size per generate call."""
        cfg = self.config
        out: list[dict[str, str]] = [{} for _ in audios]
        step = max(1, cfg.batch_size)
        # One style per generate call: its prompts have similar lengths and one token budget.
        for style in cfg.styles:
            max_new = max(1, int(MAX_NEW_TOKENS[style] * cfg.max_new_tokens_scale))
            for start in range(0, len(audios), step):
                batch = list(range(start, min(start + step, len(audios))))
                texts = self.lm.generate(
                    [audios[i] for i in batch], [PROMPTS[style]] * len(batch), max_new
                )
                for i, text in zip(batch, texts, strict=True):
                    out[i][style] = text
        return out

    def process(self, tracks: Sequence[Track]) -> list[dict[str, Any] | BaseException]:
        self.setup()
        cfg = self.config
        results: list[Any] = [None] * len(tracks)
        clips, slots, tagged = [], [], {}
        for i, track in enumerate(tracks):
            try:
                audio, _ = track.finite_audio(SAMPLE_RATE, mono=True)
                clips.append(np.ascontiguousarray(middle_clip(audio, cfg.clip_s), np.float32))
                if self.tagger is not None:
                    tagged[i] = self.tagger.tag(audio, cfg.tagger_max_s)
                slots.append(i)
            except Exception as exc:
                results[i] = exc
        described = self.describe(clips) if self.lm is not None and clips else [{} for _ in clips]
        for i, texts in zip(slots, described, strict=True):
            results[i] = self._row(tracks[i], texts, tagged.get(i))
        return results

    def _row(self, track: Track, texts: dict[str, str], tagged=None) -> dict[str, Any]:
        facts = measurements(track)
        tags = parse_tags([texts.get("tags", "")] + [v for k, v in texts.items() if k != "tags"])
        flagged = contradictions(texts.values(), facts)
        if tagged is not None:
            flagged += tagger_disagreements(
                tagged, tags if self.lm is not None else None, track.inputs.get("separation")
            )
            if self.lm is None:
                tags = {
                    "genres": tagged.genres,
                    "moods": tagged.moods,
                    "instruments": tagged.instruments,
                }
        row: dict[str, Any] = {f"caption_{s}": (texts.get(s) or None) for s in CAPTION_STYLES}
        if (
            self.lm is None
        ):  # tags / recaption backends: the tags style says what was heard and measured
            heard = tags["genres"] + tags["moods"] + tags["instruments"]
            measured = measured_tag_text(facts)
            row["caption_tags"] = (
                ", ".join(heard + ([measured] if measured != "music" else []))
                if heard
                else measured
            )
        row.update(
            caption_recaption=recaption(facts, tags, track.track_id),
            genres=tags["genres"],
            moods=tags["moods"],
            instruments=tags["instruments"],
            contradictions=flagged,
            caption_flagged=bool(flagged),
            model=self._model_name(),
        )
        return row

    def _model_name(self) -> str:
        tagger = f"tags:{self.tagger.name}" if self.tagger is not None else ""
        if self.lm is None:
            return tagger or "recaption"
        lm = f"{self.lm_backend}:{self.config.model or REGISTRY[BACKEND_WEIGHTS[self.lm_backend]].repo}"
        return f"{lm}+{tagger}" if tagger else lm


def tagger_disagreements(
    tagged, lm_tags: dict[str, list[str]] | None, separation: dict | None
) -> list[str]:
    """The tagger against the separate stage (vocals) and, when an audio LM ran, against the LM's
    genres: each disagreement as one line."""
    found = []
    if separation and separation.get("is_instrumental") is not None and tagged.vocals is not None:
        if tagged.vocals and separation["is_instrumental"]:
            found.append(
                f"vocals: tagger hears vocals (p={tagged.vocal_probability:.2f}), separate measured instrumental"
            )
        elif not tagged.vocals and not separation["is_instrumental"]:
            found.append(
                f"vocals: tagger hears no vocals (p={tagged.instrumental_probability:.2f}), separate measured vocals"
            )
    if (
        lm_tags is not None
        and lm_tags.get("genres")
        and tagged.genres
        and not set(lm_tags["genres"]) & set(tagged.genres)
    ):
        found.append(
            f"genre: audio LM says {', '.join(lm_tags['genres'][:3])}, tagger hears {', '.join(tagged.genres)}"
        )
    return found


def measured_tag_text(facts: dict[str, Any]) -> str:
    parts = []
    if facts.get("bpm"):
        parts.append(f"{round(facts['bpm'])} bpm")
    if facts.get("keyscale"):
        parts.append(facts["keyscale"])
    if facts.get("time_signature"):
        parts.append(f"{facts['time_signature']} time")
    if facts.get("instrumental") is True:
        parts.append("instrumental")
    elif facts.get("language"):
        parts.append(f"{_LANGUAGE_NAMES.get(facts['language'], facts['language'])} vocals")
    return ", ".join(parts) or "music"
