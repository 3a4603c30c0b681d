"""Annotation stages: one small module per stage behind the interface in annotate/base.py."""

from __future__ import annotations

import importlib

from songmill.annotate.base import RUNTIME, Stage, StageConfig, StageUnavailable, Track

# name -> "module:Class". Modules are imported on demand so that `songmill query` never pays for
# torch / whisper imports; stage modules import heavy libraries inside `setup`, not at top level.
STAGE_CLASSES: dict[str, str] = {
    "qc": "songmill.annotate.qc:QCStage",
    "music": "songmill.annotate.music:MusicStage",
    "separate": "songmill.annotate.separate:SeparateStage",
    "transcribe": "songmill.annotate.transcribe:TranscribeStage",
    "lyrics": "songmill.annotate.lyrics:LyricsStage",
    "features": "songmill.annotate.features:FeaturesStage",
    "aesthetics": "songmill.annotate.aesthetics:AestheticsStage",
    "structure": "songmill.annotate.structure:StructureStage",
    "caption": "songmill.annotate.caption:CaptionStage",
    "tokens": "songmill.annotate.lyric_sections:LyricSectionsStage",
    "fingerprint": "songmill.annotate.fingerprint:FingerprintStage",
}
# What `songmill annotate` runs when no --stages is given: the stages that need no model weights.
DEFAULT_STAGES: tuple[str, ...] = ("qc", "music")


def stage_class(name: str) -> type[Stage]:
    try:
        target = STAGE_CLASSES[name]
    except KeyError:
        raise KeyError(f"unknown stage {name!r}; known: {', '.join(STAGE_CLASSES)}") from None
    module_name, class_name = target.split(":")
    return getattr(importlib.import_module(module_name), class_name)


__all__ = ["DEFAULT_STAGES", "RUNTIME", "STAGE_CLASSES", "Stage", "StageConfig", "StageUnavailable", "Track", "stage_class"]
