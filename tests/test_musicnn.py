"""The musicnn tagger in torch: equal to the original TensorFlow network on real audio, sensible
tags on real instrument renders, and the caption stage's `tags` backend through the CLI offline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from packaged import packaged
from songmill.annotate.base import Track
from songmill.annotate.caption import CaptionConfig, CaptionStage
from songmill.annotate.tagger import MusicTagger, normalise
from songmill.model.musicnn import log_mel_patches

REFERENCE = Path(__file__).parent / "fixtures" / "musicnn" / "reference.npz"


@pytest.fixture(scope="module")
def tagger() -> MusicTagger:
    packaged("musicnn-mtt"), packaged("musicnn-msd")
    return MusicTagger.load()


@pytest.mark.parametrize(
    "variant,key", [("musicnn-mtt", "MTT_musicnn"), ("musicnn-msd", "MSD_musicnn")]
)
def test_torch_port_equals_the_tensorflow_original(tagger, variant, key):
    """reference.npz: the wheel's own TF graph and checkpoint on FluidSynth renders
    (tests/fixtures/musicnn/make_reference.py, run in a throwaway TensorFlow venv)."""
    ref = np.load(REFERENCE)
    model = tagger.models[variant]
    for clip in ("piano", "edm"):
        audio = ref[f"{clip}.audio"].astype(np.float32) / 32767
        patches = log_mel_patches(audio)
        np.testing.assert_array_equal(patches, ref[f"{clip}.patches"])  # the input, bit for bit
        with torch.no_grad():
            probs = torch.sigmoid(model(torch.from_numpy(patches.astype(np.float32)))).numpy()
        np.testing.assert_allclose(probs, ref[f"{clip}.{key}.probs"], atol=2e-5)
    # not trivially equal: the two clips get different tags
    assert np.abs(ref[f"piano.{key}.probs"].mean(0) - ref[f"edm.{key}.probs"].mean(0)).max() > 0.2


def _render(tmp_path: Path, piece: str, seconds: float = 10.0) -> str:
    from songmill.testaudio import render_midi

    if shutil.which("fluidsynth") is None or not render_midi.SOUNDFONT.exists():
        pytest.skip("fluidsynth + fluid-soundfont-gm not installed")
    notes, programs, bpm = getattr(render_midi, f"{piece}_piece")(seconds)
    midi = render_midi.write_midi(tmp_path / f"{piece}.mid", notes, bpm, programs)
    return str(render_midi.render(midi, tmp_path / f"{piece}.wav"))


@pytest.fixture(scope="module")
def renders(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("renders")
    return {piece: _render(folder, piece) for piece in ("piano", "electronic")}


def test_top_tags_on_real_instrument_renders(tagger, renders):
    from songmill.annotate.audio import decode, to_mono_resampled

    top = {}
    for piece, path in renders.items():
        samples, sr = decode(path)
        top[piece] = {tag for tag, _ in tagger.tag(to_mono_resampled(samples, sr, 16000)).top(5)}
    assert top["electronic"] & {"electronic", "techno", "beat", "beats", "dance", "electro"}, top
    assert top["piano"] & {"piano", "classical"}, top
    assert not top["piano"] & {"techno", "electronic", "dance"}, top


def test_normalise_maps_into_the_caption_vocabulary():
    terms = normalise(
        {
            "techno": 0.6,
            "electronica": 0.3,
            "synth": 0.2,
            "fast": 0.2,
            "00s": 0.9,
            "beat": 0.5,
            "piano": 0.05,
        }
    )
    assert terms == {
        "genres": ["techno", "electronic"],
        "moods": ["energetic"],
        "instruments": ["synthesizer"],
    }


def test_annotate_caption_offline_writes_real_captions(
    tmp_path, renders, tagger, monkeypatch, capsys
):
    """A fresh offline install: no audio-LM weights, so the default (auto) captions with the tagger."""
    from songmill.flows.cli import main

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    corpus = str(tmp_path / "corpus")
    assert main(["ingest", *renders.values(), "--corpus", corpus, "--engine", "local"]) == 0
    assert main(["annotate", "--stages", "caption", "--corpus", corpus, "--engine", "local"]) == 0
    capsys.readouterr()
    sql = "SELECT regexp_extract(t.uri, '[^/]+$') AS f, c.genres, c.instruments, c.caption_tags, c.caption_recaption, c.model FROM captions c JOIN tracks t USING (track_id) ORDER BY f"
    assert main(["query", sql, "--corpus", corpus, "--format", "json"]) == 0
    rows = {r["f"]: r for r in json.loads(capsys.readouterr().out)}
    edm, piano = rows["electronic.wav"], rows["piano.wav"]
    assert edm["model"] == "tags:musicnn-mtt+musicnn-msd"
    assert {"techno", "electronic"} & set(edm["genres"]) and "synthesizer" in edm["instruments"]
    assert "piano" in piano["instruments"] and "classical" in piano["genres"]
    assert "techno" in edm["caption_recaption"] or "electronic" in edm["caption_recaption"]
    assert "piano" in piano["caption_recaption"] and "piano" in piano["caption_tags"]


def test_vocals_are_cross_checked_against_separate(tagger, renders):
    stage = CaptionStage(CaptionConfig(backend="tags"))
    stage.setup()
    piano = renders["piano"]
    agree, disagree = stage.process([
        Track({"track_id": "a", "uri": piano, "duration_s": 10.0}, {"separation": {"is_instrumental": True}}),
        Track({"track_id": "b", "uri": piano, "duration_s": 10.0}, {"separation": {"is_instrumental": False}}),
    ])  # fmt: skip
    assert not agree["caption_flagged"] and agree["contradictions"] == []
    assert disagree["caption_flagged"] and disagree["contradictions"][0].startswith(
        "vocals: tagger hears no vocals"
    )


def test_an_audio_lm_and_the_tagger_disagreeing_on_genre_is_recorded():
    from songmill.annotate.caption import tagger_disagreements
    from songmill.annotate.tagger import TagResult

    heard = TagResult({"techno": 0.6}, ["techno", "electronic"], [], ["synthesizer"], 0.05, 0.4)
    assert tagger_disagreements(heard, {"genres": ["jazz"]}, None) == [
        "genre: audio LM says jazz, tagger hears techno, electronic"
    ]
    assert (
        tagger_disagreements(heard, {"genres": ["electronic", "house"]}, {"is_instrumental": True})
        == []
    )
    assert tagger_disagreements(heard, {"genres": []}, {"is_instrumental": False})[0].startswith(
        "vocals: tagger hears no vocals"
    )
