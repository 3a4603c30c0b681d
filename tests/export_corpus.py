"""A small annotated corpus for the export tests: real audio files and every stage row the exports
read (music, separation, transcripts, lyric sections, captions, lyrics matches)."""

from __future__ import annotations

import os

import numpy as np
from conftest import tone, write_audio
from songmill.data_schema.store import Corpus, utcnow

KEY = dict(stage_version=1, config_hash="c", run_id="r")
SECTIONS = [(0.0, 6.0, "verse"), (6.0, 12.0, "pre-chorus"), (12.0, 20.0, "chorus")]
LINES = [
    (1.0, 3.0, "walking down the empty street"),
    (7.0, 9.0, "echoes at my feet"),
    (13.0, 15.0, "we are the stars tonight"),
]


class _Rows:
    """Rows per table, written with one part file per table (a write per row is slow)."""

    def __init__(self) -> None:
        self.tables: dict[str, list[dict]] = {}

    def write(self, table: str, rows: list[dict]) -> None:
        self.tables.setdefault(table, []).extend(rows)


def song(
    corpus: _Rows,
    audio_dir: str,
    name: str,
    *,
    seed: int,
    bpm: float = 120.0,
    keyscale: str = "F# minor",
    signature: str = "4/4",
    instrumental: bool = False,
    language: str = "en",
    lyrics_language: str | None = None,
    contradictions: tuple[str, ...] = (),
    ext: str = ".wav",
    seconds: float = 20.0,
) -> str:
    """One track: its audio file and its stage rows. Returns its track_id (a name, not a hash: the
    exports never rehash)."""
    path = write_audio(
        os.path.join(audio_dir, name + ext),
        tone(seconds, seed=seed, freq=220 + 20 * seed),
        format="FLAC" if ext == ".flac" else None,
    )
    track_id = f"{seed:02d}" + "ab" * 31
    now = utcnow()
    beats = np.arange(0.25, seconds, 60.0 / bpm)
    corpus.write(
        "tracks",
        [
            dict(
                track_id=track_id,
                uri=path,
                duration_s=seconds,
                sample_rate=44100,
                channels=2,
                created_at=now,
            )
        ],
    )
    corpus.write("qc", [dict(track_id=track_id, created_at=now, **KEY, qc_pass=True)])
    corpus.write(
        "music",
        [
            dict(
                track_id=track_id,
                created_at=now,
                **KEY,
                bpm=bpm,
                bpm_confidence=0.9,
                keyscale=keyscale,
                key_tonic=keyscale.split()[0],
                key_mode=keyscale.split()[1],
                time_signature=signature,
                beats=beats.tolist(),
                downbeats=beats[::4].tolist(),
            )
        ],
    )
    corpus.write(
        "structure",
        [
            dict(
                track_id=track_id,
                created_at=now,
                **KEY,
                form=" ".join(s[2] for s in SECTIONS),
                sections=[
                    dict(start=a, end=b, label=lab, confidence=1.0) for a, b, lab in SECTIONS
                ],
            )
        ],
    )
    corpus.write(
        "separation", [dict(track_id=track_id, created_at=now, **KEY, is_instrumental=instrumental)]
    )
    lines = [] if instrumental else LINES
    corpus.write(
        "transcripts",
        [
            dict(
                track_id=track_id,
                created_at=now,
                **KEY,
                text=" ".join(t for *_, t in lines),
                language=None if instrumental else language,
                hallucination=False,
                segments=[dict(start=a, end=b, text=t) for a, b, t in lines],
            )
        ],
    )
    if instrumental:
        tagged, plain, source = "[instrumental]", "", "instrumental"
    else:
        tagged = "[verse]\nwalking down the empty street\n\n[pre-chorus]\nechoes at my feet\n\n[chorus]\nwe are the stars tonight"
        plain, source = "\n".join(t for *_, t in LINES), "transcript"
    corpus.write(
        "lyric_sections",
        [
            dict(
                track_id=track_id,
                created_at=now,
                **KEY,
                lyrics_tagged=tagged,
                lyrics_plain=plain,
                lyrics_source=source,
                lyrics_lang=None if instrumental else language,
            )
        ],
    )
    if lyrics_language:
        corpus.write(
            "lyrics",
            [
                dict(
                    lyric_id=f"L{seed}",
                    lyrics=plain,
                    language=lyrics_language,
                    title=name,
                    created_at=now,
                )
            ],
        )
        corpus.write(
            "lyrics_matches",
            [
                dict(
                    track_id=track_id,
                    created_at=now,
                    **KEY,
                    lyric_id=f"L{seed}",
                    score=0.9,
                    matched=True,
                )
            ],
        )
    corpus.write(
        "captions",
        [
            dict(
                track_id=track_id,
                created_at=now,
                **KEY,
                caption_description=f"An energetic synth-pop song, take {seed}.",
                caption_tags="synth-pop, energetic, female vocals",
                caption_recaption=f"A synth-pop song in {keyscale}.",
                genres=["synth-pop", "electronic"],
                moods=["energetic"],
                instruments=["synthesizer"],
                contradictions=list(contradictions),
                caption_flagged=bool(contradictions),
            )
        ],
    )
    return track_id


def build(tmp_path) -> tuple[Corpus, dict[str, str]]:
    rows = _Rows()
    audio = str(tmp_path / "audio")
    ids = {
        "vocal": song(rows, audio, "Vocal Song (live)", seed=1),
        "instrumental": song(
            rows,
            audio,
            "instrumental",
            seed=2,
            instrumental=True,
            bpm=96.0,
            keyscale="C major",
            signature="3/4",
        ),
        "contradicted": song(
            rows,
            audio,
            "contradicted",
            seed=3,
            contradictions=("bpm: caption says 90, measured 120",),
        ),
        "languages": song(rows, audio, "languages", seed=4, language="en", lyrics_language="de"),
        "twelve_eight": song(
            rows,
            audio,
            "twelve eight",
            seed=5,
            signature="12/8",
            language="sw",
            ext=".flac",
            bpm=400.0,
        ),
    }
    corpus = Corpus(str(tmp_path / "corpus"))
    for table, table_rows in rows.tables.items():
        corpus.write(table, table_rows)
    return corpus, ids
