"""Annotation stages: one small module per stage behind the interface in annotate/base.py."""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from songmill.annotate.base import RUNTIME, Stage, StageConfig, StageUnavailable, Track
from songmill.annotate.settings import ConfigError, build_config

if TYPE_CHECKING:
    from songmill.data_schema.store import Corpus

# The one stage registry: name -> "module:Class". Modules are imported on demand so that `songmill query` never pays for
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


def unknown_stage_message(name: str) -> str:
    """`unknown stage 'musik' (did you mean 'music'?); known: ...`"""
    import difflib

    close = difflib.get_close_matches(name, list(STAGE_CLASSES), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown stage {name!r}{hint}; known: {', '.join(STAGE_CLASSES)}"


def stage_target(name: str) -> str:
    """ "module:Class" of a stage (what a worker imports: it needs no registry of its own)."""
    try:
        return STAGE_CLASSES[name]
    except KeyError:
        raise ConfigError(unknown_stage_message(name)) from None


def import_stage(target: str) -> type[Stage]:
    """The stage class a "module:Class" target names."""
    module_name, _, class_name = target.partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def stage_class(name: str) -> type[Stage]:
    return import_stage(stage_target(name))


def build_stages(
    names: Iterable[str], settings: Mapping[str, Mapping[str, Any]], corpus: Corpus | None = None
) -> list[Stage]:
    """Stage objects, in the given order, configured from their settings tables."""
    stages = []
    for name in names:
        cls = stage_class(name)
        stages.append(cls(build_config(cls.config_class, name, settings.get(name)), corpus=corpus))
    return stages


__all__ = [
    "DEFAULT_STAGES",
    "RUNTIME",
    "STAGE_CLASSES",
    "Stage",
    "StageConfig",
    "StageUnavailable",
    "Track",
    "build_stages",
    "import_stage",
    "stage_class",
    "stage_target",
    "unknown_stage_message",
]
