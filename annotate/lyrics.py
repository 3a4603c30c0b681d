"""`lyrics` stage: link each transcript to its canonical lyric through phonemes.

transcript -> IPA (annotate/phonemes.py) -> character shingles -> MinHash (annotate/minhash.py)
-> LSH candidates from the lyrics database (annotate/lyrics_db.py) -> the best few by MinHash
estimate re-scored exactly: shingle containment (how much of what was sung is in the lyric) and
a phoneme alignment score (rapidfuzz's partial ratio: the best-aligned stretch of the lyric, so a
transcript of part of a song still scores high). Below `min_score` the track is recorded as
unmatched (lyric_id null), with its best candidates kept for inspection.

The database changes independently of this stage's config: each row records the database
fingerprint it was matched against, and `songmill reprocess --stages lyrics --where ...` re-runs
the tracks matched against an older one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from songmill.annotate.base import Stage, StageConfig, StageUnavailable, Track
from songmill.annotate.lyrics_db import LyricsDB, LyricsIndex, LyricsIndexParams
from songmill.annotate.minhash import DEFAULT_NUM_PERM, DEFAULT_SCHEME, DEFAULT_SEED, shingles
from songmill.annotate.phonemes import normalise_language, phoneme_key, to_ipa_batch

_DEFAULTS = LyricsIndexParams()


@dataclass
class LyricsConfig(StageConfig):
    num_perm: int = DEFAULT_NUM_PERM
    seed: int = DEFAULT_SEED
    scheme: str = DEFAULT_SCHEME
    shingle_size: int = _DEFAULTS.shingle_size
    lsh_threshold: float = _DEFAULTS.lsh_threshold
    # Candidates re-scored exactly, best MinHash estimates first.
    max_candidates: int = 20
    # score = alignment_weight * alignment + (1 - alignment_weight) * containment
    alignment_weight: float = 0.5
    min_score: float = 0.55
    # Shorter transcripts ('oh yeah') would match half the database: recorded as unmatched.
    min_query_phonemes: int = 24
    candidates_kept: int = 5
    # A track the LSH candidates do not match is checked against every signature (a vectorised
    # scan, ~10 ms per 100 000 lyrics): LSH misses a true lyric now and then at low Jaccard.
    fallback_scan: bool = True

    def index_params(self) -> LyricsIndexParams:
        return LyricsIndexParams(
            self.num_perm, self.seed, self.scheme, self.shingle_size, self.lsh_threshold
        )


@dataclass
class Candidate:
    lyric_id: str
    estimate: float
    jaccard: float = 0.0
    containment: float = 0.0
    alignment: float = 0.0
    score: float = 0.0


def rescore(
    query_key: str, lyric_key: str, shingle_size: int, alignment_weight: float
) -> tuple[float, float, float, float]:
    """(jaccard, containment, alignment, score) of a transcript against one lyric, exactly."""
    from rapidfuzz import fuzz

    q, lyric = set(shingles(query_key, shingle_size)), set(shingles(lyric_key, shingle_size))
    common = len(q & lyric)
    jaccard = common / len(q | lyric) if q or lyric else 0.0
    containment = common / len(q) if q else 0.0
    alignment = fuzz.partial_ratio(query_key, lyric_key) / 100.0 if query_key and lyric_key else 0.0
    score = alignment_weight * alignment + (1 - alignment_weight) * containment
    return jaccard, containment, alignment, score


class LyricsStage(Stage):
    name: ClassVar[str] = "lyrics"
    version: ClassVar[int] = 1
    table: ClassVar[str] = "lyrics_matches"
    reads: ClassVar[tuple[str, ...]] = ("transcripts",)
    requires: ClassVar[tuple[str, ...]] = ("transcripts",)
    config_class = LyricsConfig
    config: LyricsConfig

    def __init__(self, config: LyricsConfig | None = None, corpus=None):
        super().__init__(config)
        self.corpus = corpus
        self.db: LyricsDB | None = None
        self.index: LyricsIndex | None = None

    def setup(self) -> None:
        if self.corpus is None:
            raise StageUnavailable(
                "the lyrics stage needs its corpus (stage.corpus) to read the lyrics database"
            )
        self.db = LyricsDB(self.corpus, self.config.index_params())
        self.index = self.db.index()
        if len(self.index) == 0:
            raise StageUnavailable(
                f"the lyrics database of {self.corpus.root} is empty: add canonical lyrics with "
                "`songmill lyrics add FILE` (JSONL / CSV / Parquet: lyric_id, title, artist, language, lyrics)"
            )

    def process(self, tracks: Sequence[Track]) -> list[dict[str, Any] | BaseException]:
        if self.index is None:
            self.setup()
        cfg = self.config
        results: list[dict[str, Any] | BaseException] = [None] * len(tracks)  # type: ignore[list-item]
        queries: dict[int, tuple[str, str]] = {}  # track index -> (language, text)
        for i, track in enumerate(tracks):
            transcript = track.inputs.get("transcripts")
            if transcript is None:
                results[i] = LookupError(f"track {track.track_id} has no transcript")
            elif not (transcript.get("text") or "").strip():
                results[i] = self._unmatched("no-transcript")
            else:
                queries[i] = (normalise_language(transcript.get("language")), transcript["text"])
        ipa: dict[int, str] = {}
        for language in {lang for lang, _ in queries.values()}:
            members = [i for i, (lang, _) in queries.items() if lang == language]
            for i, text in zip(
                members, to_ipa_batch([queries[i][1] for i in members], language), strict=True
            ):
                ipa[i] = text
        keys = {i: phoneme_key(ipa[i]) for i in ipa}
        for i in list(keys):
            if len(keys[i]) < cfg.min_query_phonemes:
                results[i] = self._unmatched("too-short", ipa[i])
                del keys[i]
        order = sorted(keys)
        hasher = self.config.index_params().hasher()
        signatures = (
            hasher.signatures([keys[i] for i in order], cfg.shingle_size)
            if order
            else np.zeros((0, cfg.num_perm))
        )
        found = {i: self.index.query(sig) for i, sig in zip(order, signatures, strict=True)}
        # Rank each track's LSH candidates by estimated Jaccard (signatures held by the index),
        # then read the few best of the whole batch in one query for the exact re-score.
        shortlist: dict[int, list[tuple[str, float]]] = {}
        for i, signature in zip(order, signatures, strict=True):
            ids = sorted(found[i])
            estimates = hasher.jaccard_estimates(signature, self.index.signatures_of(ids))
            best_first = np.argsort(-estimates, kind="stable")[: cfg.max_candidates]
            shortlist[i] = [(ids[j], float(estimates[j])) for j in best_first]
        self._score(results, shortlist, ipa, keys, "lsh+rescore")
        if cfg.fallback_scan:
            missed = [
                i for i in order if isinstance(results[i], dict) and not results[i]["matched"]
            ]
            scanned = {
                i: self.index.nearest(signatures[order.index(i)], cfg.max_candidates)
                for i in missed
            }
            self._score(results, scanned, ipa, keys, "scan+rescore", keep_better_only=True)
        return results

    def _score(self, results: list, shortlist: dict[int, list[tuple[str, float]]], ipa: dict[int, str], keys: dict[int, str],
               method: str, keep_better_only: bool = False) -> None:  # fmt: skip
        """Exact re-score of each track's shortlist (the lyrics read in one query for all)."""
        wanted = sorted({lyric_id for pairs in shortlist.values() for lyric_id, _ in pairs})
        lyrics = self.db.get(wanted, "lyric_id, ipa") if wanted else {}
        for i, pairs in shortlist.items():
            try:
                row = self._match(
                    ipa[i],
                    keys[i],
                    [(c, e, lyrics[c]["ipa"]) for c, e in pairs if c in lyrics],
                    method,
                )
            except Exception as exc:  # one bad track never stops the batch
                results[i] = exc
                continue
            previous = results[i]
            if not keep_better_only or (row["score"] or 0) > (previous.get("score") or 0):
                results[i] = row

    def _match(
        self,
        query_ipa: str,
        query_key: str,
        shortlist: list[tuple[str, float, str | None]],
        method: str,
    ) -> dict[str, Any]:
        cfg = self.config
        if not shortlist:
            return self._unmatched(method.split("+")[0], query_ipa)
        candidates = []
        for lyric_id, estimate, lyric_ipa in shortlist:
            candidate = Candidate(lyric_id, estimate)
            candidate.jaccard, candidate.containment, candidate.alignment, candidate.score = (
                rescore(
                    query_key, phoneme_key(lyric_ipa or ""), cfg.shingle_size, cfg.alignment_weight
                )
            )
            candidates.append(candidate)
        candidates.sort(key=lambda c: (-c.score, c.lyric_id))
        best = candidates[0]
        matched = best.score >= cfg.min_score
        return self._row(
            lyric_id=best.lyric_id if matched else None,
            score=best.score,
            matched=matched,
            method=method,
            candidates=[vars(c) for c in candidates[: cfg.candidates_kept]],
            query_ipa=query_ipa,
        )

    def _unmatched(self, method: str, query_ipa: str | None = None) -> dict[str, Any]:
        return self._row(
            lyric_id=None,
            score=None,
            matched=False,
            method=method,
            candidates=[],
            query_ipa=query_ipa,
        )

    def _row(self, **values: Any) -> dict[str, Any]:
        return values | {"db_lyrics": len(self.index), "db_fingerprint": self.index.fingerprint}
