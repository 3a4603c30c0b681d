"""Songs with a known section plan (intro, verse, chorus, bridge, outro), rendered with synth.py.

Each distinct label of the plan gets its own material: a seed (so its own chord progression,
melody and bass), a drum style and a level, and every repeat of a label plays the same material,
as a real chorus does. Sections are cut from the middle of longer renders, so no section ends in
synth.py's fade-out: a boundary is a change of material, not a gap. Used to measure the structure
stage's boundaries (benchmarks/bench_structure.py) and in its tests.
"""

from __future__ import annotations

import numpy as np
from songmill.testaudio.synth import render_track

# Per label: drum style and level (the chorus is the loudest, as in most songs).
_LABEL_STYLE = {
    "intro": ("ballad", 0.5),
    "verse": ("funk", 0.65),
    "pre-chorus": ("pop", 0.75),
    "chorus": ("rock", 1.0),
    "bridge": ("edm", 0.7),
    "instrumental": ("edm", 0.8),
    "outro": ("ballad", 0.5),
}
POP_FORM = ("intro", "verse", "chorus", "verse", "chorus", "bridge", "chorus", "outro")


def render_song(
    plan: tuple[str, ...] | list[str],
    bpm: float = 120.0,
    key_tonic: str = "A",
    key_mode: str = "minor",
    bars: int | list[int] = 8,
    sr: int = 22050,
    seed: int = 0,
) -> tuple[np.ndarray, list[dict]]:
    """(frames, 2) float32 audio and its sections [{start, end, label}] in seconds."""
    bar_s = 4 * 60.0 / bpm
    counts = [bars] * len(plan) if isinstance(bars, int) else list(bars)
    rng = np.random.default_rng(seed)
    material_seed = {label: int(rng.integers(2**31)) for label in dict.fromkeys(plan)}
    pieces, sections, t = [], [], 0.0
    for label, n_bars in zip(plan, counts, strict=True):
        duration = n_bars * bar_s
        style, level = _LABEL_STYLE.get(label, ("pop", 0.7))
        # Two bars of lead-in are dropped (some renders open with music only), and one second of
        # tail keeps the fade-out away.
        audio = render_track(
            bpm,
            key_tonic,
            key_mode,
            duration + 2 * bar_s + 1.0,
            sr=sr,
            seed=material_seed[label],
            style=style,
        )
        start = int(round(2 * bar_s * sr))
        piece = audio[start : start + int(round(duration * sr))] * level
        pieces.append(piece)
        sections.append({"start": t, "end": t + len(piece) / sr, "label": label})
        t += len(piece) / sr
    return np.concatenate(pieces).astype(np.float32), sections
