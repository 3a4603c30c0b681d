"""Lyric tokenizers: a byte-level BPE trained on the corpus lyrics with `tokenizers`, or plain
UTF-8 bytes when no trained tokenizer is configured.

Ids 0-3 are the special tokens in both, as model.encoders.ByteLyricTokenizer numbers them:
0 = <pad> (also what classifier-free dropout writes), 1 = <bos>, 2 = <eos>, 3 = <unk>. The byte
fallback is that class itself: byte b -> b + 4 (vocabulary 260).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable

SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>", "<unk>"]
BYTES = "bytes"
# ACE-Step v1's lyric tokenizer: XTTS VoiceBPE (its vocab.json ships with ACE-Step's code) with
# a [START] id first, a [lang] tag before each line and [SPACE] (id 2) after it
VOICEBPE = "voicebpe:"
VOICEBPE_START_ID, VOICEBPE_LINE_END_ID = 261, 2
_STRUCTURE_LINE = re.compile(r"\[.*?\]")  # "[verse]", "[chorus]": tagged English, as ACE-Step


def _scheme_of(tokenizer) -> str:
    """ "voicebpe" for ACE-Step's vocabulary (its [START] and [SPACE] ids), so the file read as a
    plain tokenizer.json still tokenises in ACE-Step's layout; "bpe" otherwise."""
    is_voicebpe = (
        tokenizer.token_to_id("[START]") == VOICEBPE_START_ID
        and tokenizer.token_to_id("[SPACE]") == VOICEBPE_LINE_END_ID
    )
    return "voicebpe" if is_voicebpe else "bpe"


def script_language(line: str) -> str:
    """The VoiceBPE language tag by script: Hangul -> ko, kana -> ja, Han -> zh-cn, else en.

    ACE-Step detects the language with LangSegment; a script test agrees with it on the
    languages whose script decides, and tags every Latin-script line English.
    """
    if re.search(r"[\uac00-\ud7af\u1100-\u11ff]", line):
        return "ko"
    if re.search(r"[\u3040-\u30ff]", line):
        return "ja"
    if re.search(r"[\u4e00-\u9fff]", line):
        return "zh-cn"
    return "en"


def voicebpe_text(line: str, lang: str) -> str:
    """What ACE-Step hands VoiceBPE for one line: cleaned, [lang]-tagged, spaces as [SPACE].

    Cleaning here is ACE-Step's lowercasing, quote removal, whitespace collapsing and (zh) pinyin
    with tone numbers; its number / abbreviation / symbol spelling-out is not reproduced.
    """
    text = re.sub(r"\s+", " ", line.replace('"', "").lower()).strip()
    if lang == "zh-cn":
        import pypinyin

        text = "".join(
            p[0]
            for p in pypinyin.pinyin(
                text, style=pypinyin.Style.TONE3, heteronym=False, neutral_tone_with_five=True
            )
        )
    return f"[{lang}]{text}".replace(" ", "[SPACE]")


class LyricTokenizer:
    """`encode(text) -> list[int]`, `vocab_size`, and `name` (what to record with the features)."""

    def __init__(self, tokenizer=None, source: str = BYTES, scheme: str = "bpe"):
        self._tokenizer = tokenizer  # tokenizers.Tokenizer, or None for bytes
        self.source = source
        # "bpe": <bos> ids <eos> (songmill's trained BPE); "voicebpe": ACE-Step's layout
        self.scheme = scheme

    @classmethod
    def load(cls, path: str | None) -> LyricTokenizer:
        """From a tokenizer.json; "", None or "bytes" give the byte-level fallback."""
        if not path or path == BYTES:
            return cls()
        if path.startswith(VOICEBPE):
            vocab = path[len(VOICEBPE) :]
            if not os.path.exists(vocab):
                raise FileNotFoundError(
                    f"VoiceBPE vocabulary {vocab} not found: it ships with ACE-Step's code as "
                    "acestep/models/lyrics_utils/vocab.json"
                )
            from tokenizers import Tokenizer

            return cls(Tokenizer.from_file(vocab), os.path.abspath(vocab), scheme="voicebpe")
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"lyric tokenizer {path} not found; train one with "
                f"`songmill train tokenizer --out {path}` or leave the setting empty for bytes"
            )
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(path)
        return cls(tokenizer, os.path.abspath(path), scheme=_scheme_of(tokenizer))

    @classmethod
    def train(
        cls, texts: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2
    ) -> LyricTokenizer:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=SPECIAL_TOKENS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte stays encodable
        )
        tokenizer.train_from_iterator((t for t in texts if t), trainer=trainer)
        return cls(tokenizer, "trained")

    def save(self, path: str) -> str:
        if self._tokenizer is None:
            raise ValueError("the byte-level fallback has nothing to save")
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._tokenizer.save(path)
        self.source = os.path.abspath(path)
        return path

    @property
    def vocab_size(self) -> int:
        return (
            256 + len(SPECIAL_TOKENS)
            if self._tokenizer is None
            else self._tokenizer.get_vocab_size()
        )

    @property
    def name(self) -> str:
        if self._tokenizer is None:
            return BYTES
        blob = self._tokenizer.to_str().encode()
        prefix = "voicebpe" if self.scheme == "voicebpe" else "bpe"
        return f"{prefix}-{hashlib.sha256(blob).hexdigest()[:12]}"

    def to_json(self) -> str | None:
        if self._tokenizer is None:
            return None
        if self.scheme == "voicebpe":  # the scheme travels with the vocabulary
            return json.dumps(
                {"songmill_lyric_scheme": "voicebpe", "tokenizer": self._tokenizer.to_str()}
            )
        return self._tokenizer.to_str()

    @classmethod
    def from_json(cls, text: str | None) -> LyricTokenizer:
        if not text:
            return cls()
        from tokenizers import Tokenizer

        data = json.loads(text)
        if isinstance(data, dict) and data.get("songmill_lyric_scheme") == "voicebpe":
            return cls(Tokenizer.from_str(data["tokenizer"]), "embedded", scheme="voicebpe")
        tokenizer = Tokenizer.from_str(text)
        return cls(tokenizer, "embedded", scheme=_scheme_of(tokenizer))

    def encode_ids(self, text: str) -> list[int]:
        """<bos> ids <eos>; [] for no lyrics. (model.encoders.tokenize_lyrics calls this.)"""
        if not text:
            return []
        if self._tokenizer is None:
            from songmill.model.encoders import ByteLyricTokenizer

            return ByteLyricTokenizer().encode_ids(text)
        if self.scheme == "voicebpe":
            return self._voicebpe_ids(text)
        return [1, *self._tokenizer.encode(text).ids, 2]

    def _voicebpe_ids(self, text: str) -> list[int]:
        """ACE-Step's pipeline.tokenize_lyrics layout: [START], then per line its ids + [SPACE]
        (an empty line is a lone [SPACE])."""
        ids = [VOICEBPE_START_ID]
        for line in text.split("\n"):
            line = line.strip()
            if not line:
                ids.append(VOICEBPE_LINE_END_ID)
                continue
            lang = "en" if _STRUCTURE_LINE.match(line) else script_language(line)
            ids += [*self._tokenizer.encode(voicebpe_text(line, lang)).ids, VOICEBPE_LINE_END_ID]
        return ids
