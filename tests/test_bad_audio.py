"""Awkward input through the new stages in one run: silence, a 1 s file, 8 channels, a 30-minute
file and NaN samples each end as a row or an `errors` row, and the run goes on."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from conftest import rows, tone, write_audio
from songmill.annotate.ingest import ingest
from songmill.annotate.runner import run_stages

torch = pytest.importorskip("torch")
pytest.importorskip("audiobox_aesthetics")

from songmill.annotate.aesthetics import AestheticsConfig, AestheticsStage  # noqa: E402
from songmill.annotate.caption import CaptionConfig, CaptionStage  # noqa: E402
from songmill.annotate.lyric_sections import LyricSectionsConfig, LyricSectionsStage  # noqa: E402
from songmill.annotate.structure import StructureConfig, StructureStage  # noqa: E402
from test_aesthetics import save_tiny  # noqa: E402
from test_caption import save_qwen2_audio  # noqa: E402


def write_bad_files(folder) -> list[str]:
    rng = np.random.default_rng(0)
    write_audio(folder / "silence.wav", np.zeros((44100 * 5, 2), np.float32))
    write_audio(folder / "one_second.wav", tone(1.0))
    eight = np.repeat(tone(4.0, channels=1), 8, axis=1) * np.linspace(0.2, 1.0, 8)[None, :]
    write_audio(folder / "eight_channels.wav", eight.astype(np.float32))
    # 30 minutes kept cheap: 8 kHz mono, quiet noise with a tone every few seconds.
    sr, n = 8000, 8000 * 1800
    long = 0.01 * rng.standard_normal(n).astype(np.float32)
    t = np.arange(n) / sr
    long += (0.2 * np.sin(2 * np.pi * 330 * t) * ((t % 4) < 1)).astype(np.float32)
    write_audio(folder / "thirty_minutes.wav", long, sr, subtype="PCM_16")
    nan = tone(3.0)
    nan[1000:2000] = np.nan
    sf.write(str(folder / "nan.wav"), nan, 44100, subtype="FLOAT")
    return ["silence.wav", "one_second.wav", "eight_channels.wav", "thirty_minutes.wav", "nan.wav"]


@pytest.mark.slow  # ~20 s alone: four stages over six files, one of them 30 minutes long
def test_every_bad_file_ends_as_a_row_or_an_error_and_the_run_goes_on(tmp_path, corpus):
    names = write_bad_files(tmp_path / "in")
    write_audio(tmp_path / "in" / "good.wav", tone(6.0, freq=330.0, seed=5))
    ingest(corpus, [str(tmp_path / "in")])
    stages = [
        AestheticsStage(
            AestheticsConfig(model=save_tiny(tmp_path / "aes"), device="cpu", window_batch=8)
        ),
        StructureStage(StructureConfig(max_duration_s=90.0)),  # longer tracks: their first 90 s
        CaptionStage(
            CaptionConfig(
                backend="qwen2-audio",
                model=save_qwen2_audio(tmp_path / "qa"),
                device="cpu",
                max_new_tokens_scale=0.05,
                styles=("tags", "description"),
            )
        ),
        LyricSectionsStage(LyricSectionsConfig(), corpus=corpus),
    ]
    summaries = run_stages(corpus, stages, batch_size=3)
    assert all(s.unavailable is None for s in summaries)
    per_stage = {s.stage: (s.n_ok, s.n_error) for s in summaries}
    for stage in ("aesthetics", "structure", "caption", "tokens"):
        ok, failed = per_stage[stage]
        assert ok + failed == len(names) + 1, stage
    files = [r[0] for r in rows(corpus, "SELECT regexp_extract(uri, '[^/]+$') FROM tracks")]
    assert sorted(files) == sorted(names + ["good.wav"])
    errors = rows(corpus, "SELECT regexp_extract(uri, '[^/]+$'), stage, message FROM errors")
    # NaN samples are refused by the stages that listen to the audio, in one clear message.
    for stage in ("aesthetics", "structure", "caption"):
        [(file, message)] = [(f, m) for f, s, m in errors if s == stage]
        assert file == "nan.wav" and "NaN" in message
    got = {
        r[0]: r[1:]
        for r in rows(
            corpus,
            "SELECT regexp_extract(uri, '[^/]+$'), aes_windows, structure_form, caption_recaption, lyrics_source FROM manifest",
        )
    }
    assert got["thirty_minutes.wav"][0] == 30  # the window cap keeps a long file cheap
    assert got["one_second.wav"][0] == 1 and got["one_second.wav"][1] == "intro"
    assert got["silence.wav"][1] == "intro"  # 5 s: too short for two sections
    assert got["eight_channels.wav"][0] == 1 and got["good.wav"][2]
    assert "30:00 long" in got["thirty_minutes.wav"][2]
