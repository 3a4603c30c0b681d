"""`tokens` stage (table `lyric_sections`): the lyrics the trainer reads, with and without section tags.

From the transcript's segment times and the structure stage's sections:
- each sung line gets the section it falls in (by the midpoint of its transcript segment);
- when the `lyrics` stage matched a canonical lyric, its lines are aligned to the transcript
  segments in order (rapidfuzz similarity, monotonic: a line never maps before the previous one)
  and take those segments' sections, so the canonical text, not the recogniser's, is tagged; lines
  no segment matches keep the previous line's section;
- `lyrics_tagged` puts `[verse]` / `[chorus]` / ... before each run of lines of one section (ACE-Step
  style); `lyrics_plain` is the same lines without tags; an instrumental is `[instrumental]`.
G2P (annotate/phonemes.py) is stored for texts in a non-Romanised script (hanzi, kana, hangul,
Cyrillic, ...), and the BPE lyric token ids of the tagged text come from songmill.model.lyric_tokens
(the tokenizer named by `lyric_tokenizer`, UTF-8 bytes when unset), so the features stage and the
trainer read one agreed text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

from songmill.annotate.base import Stage, StageConfig, StageUnavailable, Track
from songmill.annotate.phonemes import normalise_language, strip_section_tags
from songmill.data_schema.windows import INSTRUMENTAL_TAG, section_at, tag_lines

INSTRUMENTAL = INSTRUMENTAL_TAG
_LATIN = re.compile(r"[A-Za-z\u00c0-\u024f]")
_LETTER = re.compile(r"[^\W\d_]")


@dataclass
class LyricSectionsConfig(StageConfig):
    lyric_tokenizer: str = ""  # tokenizer.json from `songmill train tokenizer`; "" = UTF-8 bytes
    min_line_similarity: float = (
        55.0  # rapidfuzz ratio (0-100) for a canonical line to take a segment's section
    )
    max_tokens: int = 4096


def is_romanised(text: str) -> bool:
    letters = _LETTER.findall(text)
    return not letters or sum(bool(_LATIN.match(ch)) for ch in letters) >= 0.8 * len(letters)


def transcript_lines(transcript: dict, sections: list[dict]) -> list[tuple[str, str | None]]:
    """(line, section label) per transcript segment with words."""
    out = []
    for seg in transcript.get("segments") or []:
        text = " ".join((seg.get("text") or "").split())
        if text:
            out.append((text, section_at(sections, (float(seg["start"]) + float(seg["end"])) / 2)))
    return out


def align_canonical(
    canonical: str, heard: list[tuple[str, str | None]], min_similarity: float
) -> list[tuple[str, str | None]]:
    """Canonical lines with the section of the transcript segment each one matches (in order)."""
    from rapidfuzz import fuzz

    lines = [" ".join(line.split()) for line in strip_section_tags(canonical).splitlines()]
    lines = [line for line in lines if line]
    out: list[tuple[str, str | None]] = []
    pointer, current = 0, heard[0][1] if heard else None
    for line in lines:
        best, best_score = None, min_similarity
        for j in range(pointer, len(heard)):
            score = fuzz.ratio(line.lower(), heard[j][0].lower())
            if score > best_score:
                best, best_score = j, score
        if best is not None:
            pointer, current = best + 1, heard[best][1]
        out.append((line, current))
    return out


class LyricSectionsStage(Stage):
    name: ClassVar[str] = "tokens"  # the SPEC's stage name; its table is lyric_sections
    version: ClassVar[int] = 1
    table: ClassVar[str] = "lyric_sections"
    reads: ClassVar[tuple[str, ...]] = ("transcripts", "structure", "lyrics_matches", "separation")
    config_class = LyricSectionsConfig
    config: LyricSectionsConfig

    def __init__(self, config: LyricSectionsConfig | None = None, corpus=None):
        super().__init__(config, corpus)
        self.tokenizer = None
        self.lyrics_by_id: dict[str, dict[str, Any]] = {}

    def setup(self) -> None:
        from songmill.model.lyric_tokens import LyricTokenizer

        try:
            self.tokenizer = LyricTokenizer.load(self.config.lyric_tokenizer)
        except FileNotFoundError as exc:
            raise StageUnavailable(f"lyric_sections: {exc}") from None
        if self.corpus is not None:
            rows = self.corpus.sql(
                "SELECT lyric_id, lyrics, language FROM lyrics WHERE lyrics IS NOT NULL"
            ).to_pylist()
            self.lyrics_by_id = {r["lyric_id"]: r for r in rows}

    def canonical(self, track: Track) -> tuple[str | None, str | None]:
        match = track.inputs.get("lyrics_matches") or {}
        if not match.get("matched") or not match.get("lyric_id"):
            return None, None
        if isinstance(match.get("lyrics"), str) and match["lyrics"].strip():
            return match["lyrics"], match.get("lyrics_language")
        row = self.lyrics_by_id.get(match["lyric_id"])
        return (row["lyrics"], row.get("language")) if row else (None, None)

    def process_track(self, track: Track) -> dict[str, Any]:
        if self.tokenizer is None:
            self.setup()
        transcript = track.inputs.get("transcripts") or {}
        sections = list((track.inputs.get("structure") or {}).get("sections") or [])
        separation = track.inputs.get("separation") or {}
        canonical, canonical_language = self.canonical(track)
        heard = [] if transcript.get("hallucination") else transcript_lines(transcript, sections)
        if separation.get("is_instrumental") or (
            not heard and not canonical and (transcript or separation)
        ):
            plain, tagged, source, language = "", INSTRUMENTAL, "instrumental", None
        elif canonical:
            lines = (
                align_canonical(canonical, heard, self.config.min_line_similarity)
                if heard and sections
                else None
            )
            plain = "\n".join(
                " ".join(line.split())
                for line in strip_section_tags(canonical).splitlines()
                if line.strip()
            )
            tagged = tag_lines(lines) if lines else canonical.strip()
            source, language = "canonical", canonical_language or transcript.get("language")
        elif heard:
            plain = "\n".join(line for line, _ in heard)
            tagged = tag_lines(heard) if sections else plain
            source, language = "transcript", transcript.get("language")
        else:  # nothing known about vocals yet
            plain, tagged, source, language = "", "", "none", None
        language = normalise_language(language) if language else None
        phonemes = None
        if plain and not is_romanised(plain):
            from songmill.annotate.phonemes import to_ipa

            phonemes = to_ipa(plain, language)
        ids = self.tokenizer.encode_ids(tagged)[: self.config.max_tokens]
        return {
            "lyrics_plain": plain,
            "lyrics_tagged": tagged,
            "lyrics_source": source,
            "lyrics_lang": language,
            "lyrics_phonemes": phonemes,
            "lyric_token_ids": ids,
            "lyric_tokenizer": self.tokenizer.name,
            "n_lyric_tokens": len(ids),
        }
