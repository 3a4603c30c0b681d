"""Generated lyrics and espeak-ng vocals over music, for tests, benchmarks and the demo.

espeak-ng speaks through its C library (the one the espeakng-loader wheel ships, else the system
libespeak-ng) in synchronous mode; each line gets its own pitch and speed so that the result
moves like a (very plain) singer. `mix_vocals` lays the voice over an accompaniment at a chosen
vocal-to-music level, which is what a separation and transcription pipeline is up against.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading

import numpy as np
import soxr

# Everyday song words: lyrics drawn from these share a vocabulary, like real lyrics do, so
# matching has to rely on what is said in which order.
WORDS = """
love heart night day light dream fire rain sun moon star sky sea river road home time life world
way hand eye soul mind song dance city street summer winter morning evening shadow window door
heaven angel baby darling friend lover stranger story memory promise secret answer question
golden silver broken empty open wild free lonely holy quiet little bright dark cold warm young old
sweet bitter slow fast high low deep true blue red green
run fall fly hold burn shine cry smile sing walk wait stay leave find lose know feel need want
give take keep break call hear see touch follow remember forget believe dance dream breathe turn
tonight forever again away together alone always never tomorrow yesterday inside outside
""".split()
_LINE_SHAPES = (
    "{a} {b} {c} {d}",
    "I {v} your {n} {t}",
    "we {v} the {adj} {n}",
    "{t} I {v} {adj} {n}",
    "you {v} my {n} and {v2} the {n2}",
    "in the {adj} {n} of {n2}",
    "{adj} {n} {v} {t}",
    "oh my {n} {v} {t}",
)
_NOUNS = WORDS[: WORDS.index("golden")]
_ADJECTIVES = WORDS[WORDS.index("golden") : WORDS.index("run")]
_VERBS = WORDS[WORDS.index("run") : WORDS.index("tonight")]
_TIMES = WORDS[WORDS.index("tonight") :]


def generate_lyrics(
    count: int, seed: int = 0, lines: tuple[int, int] = (4, 8), chorus: bool = True
) -> list[str]:
    """`count` distinct lyric texts, one line per verse line; a chorus line may come back."""
    rng = np.random.default_rng(seed)
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < count:
        n_lines = int(rng.integers(lines[0], lines[1] + 1))
        text_lines = []
        for _ in range(n_lines):
            shape = _LINE_SHAPES[int(rng.integers(len(_LINE_SHAPES)))]
            pick = lambda pool: pool[int(rng.integers(len(pool)))]  # noqa: E731
            text_lines.append(
                shape.format(
                    a=pick(WORDS),
                    b=pick(WORDS),
                    c=pick(WORDS),
                    d=pick(WORDS),
                    v=pick(_VERBS),
                    v2=pick(_VERBS),
                    n=pick(_NOUNS),
                    n2=pick(_NOUNS),
                    adj=pick(_ADJECTIVES),
                    t=pick(_TIMES),
                )  # fmt: skip
            )
        if chorus and n_lines >= 4 and rng.random() < 0.5:
            text_lines.append(text_lines[0])  # the hook comes back
        text = "\n".join(text_lines)
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


class Espeak:
    """espeak-ng's synthesiser through ctypes; one instance per process is enough."""

    _lock = threading.Lock()
    _CALLBACK = ctypes.CFUNCTYPE(
        ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
    )

    def __init__(self) -> None:
        try:
            import espeakng_loader

            library, data = espeakng_loader.get_library_path(), espeakng_loader.get_data_path()
        except ImportError:  # the system package (apt-get install espeak-ng)
            library, data = ctypes.util.find_library("espeak-ng"), None
            if library is None:
                raise RuntimeError(
                    "espeak-ng not found: pip install espeakng-loader, or apt-get install espeak-ng"
                ) from None
        self._lib = ctypes.CDLL(library)
        self.sample_rate = self._lib.espeak_Initialize(
            2, 0, data.encode() if data else None, 0
        )  # 2: synchronous
        if self.sample_rate <= 0:
            raise RuntimeError(f"espeak-ng failed to initialise from {library}")
        self._chunks: list[np.ndarray] = []
        self._callback = self._CALLBACK(self._collect)  # keep a reference: C holds the pointer
        self._lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav, n: int, events) -> int:
        if n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0

    def speak(
        self,
        text: str,
        voice: str = "en-us",
        rate: int = 150,
        pitch: int = 50,
        pitch_range: int = 50,
    ) -> np.ndarray:
        """float32 mono samples at `self.sample_rate` (words per minute `rate`, pitch 0-99)."""
        data = text.encode("utf-8")
        with self._lock:
            if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise ValueError(f"espeak-ng has no voice {voice!r}")
            for parameter, value in ((1, rate), (3, pitch), (4, pitch_range)):  # rate, pitch, range
                self._lib.espeak_SetParameter(parameter, int(value), 0)
            self._chunks = []
            # 1 = espeakCHARS_UTF8; the size counts the terminating NUL.
            self._lib.espeak_Synth(
                ctypes.c_char_p(data), ctypes.c_size_t(len(data) + 1), 0, 0, 0, 1, None, None
            )
            self._lib.espeak_Synchronize()
            chunks, self._chunks = self._chunks, []
        if not chunks:
            return np.zeros(0, np.float32)
        return (np.concatenate(chunks).astype(np.float32) / 32768.0).astype(np.float32)


_espeak: Espeak | None = None


def espeak() -> Espeak:
    global _espeak
    if _espeak is None:
        _espeak = Espeak()
    return _espeak


def sing(
    lyrics: str, seed: int = 0, voice: str = "en-us", gap_s: float = 0.35
) -> tuple[np.ndarray, int]:
    """The lyrics 'sung' line by line (pitch and tempo vary per line); mono float32 and its rate."""
    rng = np.random.default_rng(seed)
    synth = espeak()
    sr = synth.sample_rate
    pieces = []
    for line in (ln.strip() for ln in lyrics.splitlines()):
        if not line:
            continue
        pitch = int(rng.integers(35, 75))
        rate = int(rng.integers(135, 175))
        pieces.append(
            synth.speak(
                line, voice=voice, rate=rate, pitch=pitch, pitch_range=int(rng.integers(40, 90))
            )
        )
        pieces.append(np.zeros(int(gap_s * sr), np.float32))
    if not pieces:
        return np.zeros(0, np.float32), sr
    return np.concatenate(pieces), sr


def mix_vocals(
    vocals: np.ndarray,
    vocal_sr: int,
    accompaniment: np.ndarray,
    sr: int,
    vocal_to_music_db: float = 0.0,
    start_s: float = 1.0,
) -> np.ndarray:
    """Stereo (frames, 2) mix: the mono voice, resampled to `sr`, from `start_s`, at
    `vocal_to_music_db` RMS over the accompaniment (measured where the voice sounds)."""
    voice = vocals.astype(np.float32)
    if vocal_sr != sr:  # soxr HQ, as annotate/audio.py resamples (testaudio imports no other layer)
        voice = soxr.resample(voice, vocal_sr, sr, quality="HQ").astype(np.float32, copy=False)
    music = (
        accompaniment if accompaniment.ndim == 2 else np.repeat(accompaniment[:, None], 2, axis=1)
    )
    start = int(start_s * sr)
    n = max(music.shape[0], start + voice.size)
    mix = np.zeros((n, 2), np.float32)
    mix[: music.shape[0]] += music
    span = slice(start, start + voice.size)
    music_rms = float(np.sqrt(np.mean(mix[span] ** 2))) or 1e-3
    voice_rms = float(np.sqrt(np.mean(voice**2))) or 1e-3
    gain = music_rms / voice_rms * 10 ** (vocal_to_music_db / 20)
    mix[span] += gain * voice[:, None]
    peak = float(np.abs(mix).max()) or 1.0
    return (mix * min(1.0, 0.95 / peak)).astype(np.float32)
