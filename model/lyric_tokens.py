"""Lyric tokenizers: a byte-level BPE trained on the corpus lyrics with `tokenizers`, or plain
UTF-8 bytes when no trained tokenizer is configured.

Ids 0-3 are the special tokens in both, as model.encoders.ByteLyricTokenizer numbers them:
0 = <pad> (also what classifier-free dropout writes), 1 = <bos>, 2 = <eos>, 3 = <unk>. The byte
fallback is that class itself: byte b -> b + 4 (vocabulary 260).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable

SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>", "<unk>"]
BYTES = "bytes"


class LyricTokenizer:
    """`encode(text) -> list[int]`, `vocab_size`, and `name` (what to record with the features)."""

    def __init__(self, tokenizer=None, source: str = BYTES):
        self._tokenizer = tokenizer  # tokenizers.Tokenizer, or None for bytes
        self.source = source

    @classmethod
    def load(cls, path: str | None) -> LyricTokenizer:
        """From a tokenizer.json; "", None or "bytes" give the byte-level fallback."""
        if not path or path == BYTES:
            return cls()
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"lyric tokenizer {path} not found; train one with "
                f"`songmill train tokenizer --out {path}` or leave the setting empty for bytes"
            )
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(path), os.path.abspath(path))

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2) -> LyricTokenizer:
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
        return 256 + len(SPECIAL_TOKENS) if self._tokenizer is None else self._tokenizer.get_vocab_size()

    @property
    def name(self) -> str:
        if self._tokenizer is None:
            return BYTES
        blob = self._tokenizer.to_str().encode()
        return f"bpe-{hashlib.sha256(blob).hexdigest()[:12]}"

    def to_json(self) -> str | None:
        return None if self._tokenizer is None else self._tokenizer.to_str()

    @classmethod
    def from_json(cls, text: str | None) -> LyricTokenizer:
        if not text:
            return cls()
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_str(text), "embedded")

    def encode_ids(self, text: str) -> list[int]:
        """<bos> ids <eos>; [] for no lyrics. (model.encoders.tokenize_lyrics calls this.)"""
        if not text:
            return []
        if self._tokenizer is None:
            from songmill.model.encoders import ByteLyricTokenizer

            return ByteLyricTokenizer().encode_ids(text)
        return [1, *self._tokenizer.encode(text).ids, 2]
