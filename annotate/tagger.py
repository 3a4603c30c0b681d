"""The music tagger behind the caption stage's `tags` backend: musicnn (model/musicnn.py) with the
weights converted from the `musicnn` wheel (annotate/packaged_weights.py), no TensorFlow.

Two taggers run when present: MagnaTagATune (`musicnn-mtt`: instruments, genre, tempo / loudness
words, vocal / no vocal) and Million Song Dataset (`musicnn-msd`: genre, mood, decade). A track's
tags are the mean of the 3 s patch probabilities (as musicnn's own `top_tags` does). `normalise`
maps them into the caption vocabulary (annotate/caption.py: GENRES, MOODS, INSTRUMENTS) and reads
a vocal / instrumental verdict from the vocal tags.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from songmill.annotate.base import StageUnavailable
from songmill.annotate.weights import REGISTRY, locate, missing_message

SAMPLE_RATE = 16000
# Tag -> (column, caption-vocabulary term). Tags left out say nothing a caption uses
# (decades, "experimental", "weird", "solo", "beat": a style of playing, not an instrument).
TAG_MAP: dict[str, tuple[str, str]] = {
    # genres
    "classical": ("genres", "classical"), "classic": ("genres", "classical"), "opera": ("genres", "classical"),
    "choral": ("genres", "classical"), "techno": ("genres", "techno"), "electronic": ("genres", "electronic"),
    "electronica": ("genres", "electronic"), "electro": ("genres", "electronic"), "rock": ("genres", "rock"),
    "alternative": ("genres", "rock"), "alternative rock": ("genres", "rock"), "classic rock": ("genres", "rock"),
    "hard rock": ("genres", "rock"), "progressive rock": ("genres", "rock"), "indie rock": ("genres", "indie"),
    "indie": ("genres", "indie"), "indie pop": ("genres", "indie"), "pop": ("genres", "pop"),
    "dance": ("genres", "dance"), "house": ("genres", "house"), "ambient": ("genres", "ambient"),
    "new age": ("genres", "ambient"), "chillout": ("genres", "lo-fi"), "indian": ("genres", "world"),
    "country": ("genres", "country"), "metal": ("genres", "metal"), "heavy metal": ("genres", "metal"),
    "jazz": ("genres", "jazz"), "soul": ("genres", "soul"), "folk": ("genres", "folk"), "punk": ("genres", "punk"),
    "blues": ("genres", "blues"), "hip-hop": ("genres", "hip-hop"), "funk": ("genres", "funk"), "rnb": ("genres", "r&b"),
    # moods
    "slow": ("moods", "calm"), "soft": ("moods", "calm"), "quiet": ("moods", "peaceful"), "fast": ("moods", "energetic"),
    "loud": ("moods", "energetic"), "mellow": ("moods", "relaxed"), "chill": ("moods", "relaxed"),
    "easy listening": ("moods", "relaxed"), "beautiful": ("moods", "emotional"), "sad": ("moods", "sad"),
    "happy": ("moods", "happy"), "party": ("moods", "upbeat"), "catchy": ("moods", "upbeat"), "sexy": ("moods", "romantic"),
    # instruments
    "guitar": ("instruments", "guitar"), "acoustic": ("instruments", "acoustic guitar"), "strings": ("instruments", "strings"),
    "drums": ("instruments", "drums"), "piano": ("instruments", "piano"), "violin": ("instruments", "violin"),
    "synth": ("instruments", "synthesizer"), "harpsichord": ("instruments", "keyboards"), "flute": ("instruments", "flute"),
    "harp": ("instruments", "harp"), "cello": ("instruments", "cello"), "choir": ("instruments", "choir"),
    "sitar": ("instruments", "strings"),
}  # fmt: skip
VOCAL_TAGS = frozenset({
    "vocal", "vocals", "singing", "voice", "female", "male", "woman", "man", "male vocal", "female vocal",
    "male voice", "female voice", "choir", "choral", "opera", "female vocalists", "male vocalists", "female vocalist",
})  # fmt: skip
NO_VOCAL_TAGS = frozenset({"no vocals", "no vocal", "no voice", "instrumental"})
LIMITS = {"genres": 2, "moods": 2, "instruments": 4}


@dataclass
class TagResult:
    scores: dict[str, float]  # raw tag (lower case) -> mean probability, over both taggers (max)
    genres: list[str]
    moods: list[str]
    instruments: list[str]
    vocal_probability: float
    instrumental_probability: float

    @property
    def vocals(self) -> bool | None:
        """True / False when the vocal tags clearly lean one way, else None."""
        if max(self.vocal_probability, self.instrumental_probability) < 0.15:
            return None
        if abs(self.vocal_probability - self.instrumental_probability) < 0.05:
            return None
        return self.vocal_probability > self.instrumental_probability

    def top(self, n: int = 5) -> list[tuple[str, float]]:
        return sorted(self.scores.items(), key=lambda kv: -kv[1])[:n]


def normalise(scores: dict[str, float], threshold: float = 0.1) -> dict[str, list[str]]:
    """Caption-vocabulary genres / moods / instruments from raw tag probabilities: every mapped
    tag at or above `threshold`, strongest first (at most LIMITS per column), and the strongest
    genre even under the threshold (a caption always names one) when it is at least half of it."""
    best: dict[str, dict[str, float]] = {c: {} for c in LIMITS}
    for tag, p in scores.items():
        if tag in TAG_MAP:
            column, term = TAG_MAP[tag]
            best[column][term] = max(p, best[column].get(term, 0.0))
    out = {}
    for column, terms in best.items():
        ranked = sorted(terms.items(), key=lambda kv: -kv[1])
        kept = [t for t, p in ranked if p >= threshold][: LIMITS[column]]
        if not kept and column == "genres" and ranked and ranked[0][1] >= threshold / 2:
            kept = [ranked[0][0]]
        out[column] = kept
    return out


class MusicTagger:
    """The loaded musicnn taggers (MTT required, MSD when present)."""

    def __init__(self, models: dict[str, object], threshold: float = 0.1):
        self.models = models  # weights name -> Musicnn
        self.threshold = threshold
        self.name = "+".join(models)

    @classmethod
    def load(
        cls, mtt: str = "", msd: str = "", device: str = "cpu", threshold: float = 0.1
    ) -> MusicTagger:
        """Load from the settings (a folder, or "" for the songmill-assembled copy); MSD is
        optional ("none" leaves it out). StageUnavailable names what to fetch when MTT is absent."""
        models = {}
        for name, setting in (("musicnn-mtt", mtt), ("musicnn-msd", msd)):
            if setting == "none":
                continue
            spec = REGISTRY[name]
            where = locate(spec, setting or None)
            if not where.present:
                if name == "musicnn-msd":
                    continue
                raise StageUnavailable(missing_message(spec, where.looked, "caption (tags)"))
            models[name] = _load_musicnn(Path(where.path), device)
        return cls(models, threshold)

    def tag(self, audio: np.ndarray, max_s: float = 600.0) -> TagResult:
        """Tags of 16 kHz mono audio (at most `max_s` seconds, from the middle)."""
        import torch
        from songmill.model.musicnn import log_mel_patches

        n = int(max_s * SAMPLE_RATE)
        if audio.size > n:
            start = (audio.size - n) // 2
            audio = audio[start : start + n]
        patches = torch.from_numpy(
            log_mel_patches(np.ascontiguousarray(audio, np.float32)).astype(np.float32)
        )
        scores: dict[str, float] = {}
        for model in self.models.values():
            device = next(model.parameters()).device
            with torch.inference_mode():
                probs = torch.sigmoid(model(patches.to(device))).mean(0).cpu().numpy()
            for label, p in zip(model.config.labels, probs, strict=True):
                key = label.lower()
                scores[key] = max(float(p), scores.get(key, 0.0))
        terms = normalise(scores, self.threshold)
        return TagResult(
            scores=scores, genres=terms["genres"], moods=terms["moods"], instruments=terms["instruments"],
            vocal_probability=max((p for t, p in scores.items() if t in VOCAL_TAGS), default=0.0),
            instrumental_probability=max((p for t, p in scores.items() if t in NO_VOCAL_TAGS), default=0.0),
        )  # fmt: skip


def _load_musicnn(folder: Path, device: str):
    from safetensors.torch import load_file
    from songmill.model.musicnn import Musicnn, MusicnnConfig

    meta = json.loads((folder / "musicnn.json").read_text())
    meta.pop("source", None)
    model = Musicnn(MusicnnConfig.from_dict(meta))
    state = load_file(str(folder / "musicnn.safetensors"))
    expected = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    if set(state) != expected:
        raise StageUnavailable(
            f"{folder / 'musicnn.safetensors'} does not hold musicnn's weights: `songmill models fetch` rebuilds it"
        )
    model.load_state_dict(state, strict=False)
    return model.eval().requires_grad_(False).to(device)
