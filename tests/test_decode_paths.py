"""annotate.audio.decode reads a local file through libsndfile directly (no copy of its bytes
first): the same samples and info as from the bytes, and the same errors for bad files."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from songmill.annotate.audio import DecodeError, decode, decode_with_info


def music(seconds: float = 2.0, sr: int = 44100) -> np.ndarray:
    rng = np.random.default_rng(5)
    t = np.arange(int(seconds * sr)) / sr
    left = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.shape[0])
    right = 0.3 * np.sin(2 * np.pi * 330 * t) * (t % 0.5 < 0.25)
    return np.stack([left, right], axis=1).astype(np.float32)


@pytest.mark.parametrize(
    ("suffix", "fmt", "subtype"),
    [
        (".wav", "WAV", "PCM_16"),
        (".wav", "WAV", "FLOAT"),
        (".flac", "FLAC", "PCM_24"),
        (".ogg", "OGG", "VORBIS"),
    ],
)
def test_a_local_path_decodes_as_its_bytes(tmp_path, suffix, fmt, subtype):
    path = tmp_path / f"x{suffix}"
    sf.write(str(path), music(), 44100, format=fmt, subtype=subtype)
    (from_path, sr), info = decode_with_info(str(path))
    (from_bytes, sr_bytes), info_bytes = decode_with_info(path.read_bytes())
    assert sr == sr_bytes == 44100
    assert info == info_bytes
    np.testing.assert_array_equal(from_path, from_bytes)
    np.testing.assert_array_equal(decode(f"file://{path}")[0], from_bytes)
    assert from_path.shape[1] == 2 and float(np.abs(from_path).max()) > 0.1


@pytest.mark.parametrize(
    "content",
    [
        b"",  # empty
        b"not audio at all " * 64,
        b"RIFF\x24\x00\x00\x00WAVEfmt ",  # a WAV header cut short
    ],
)
def test_bad_local_files_give_the_errors_of_their_bytes(tmp_path, content):
    path = tmp_path / "bad.wav"
    path.write_bytes(content)
    with pytest.raises(DecodeError) as from_bytes:
        decode(content)
    with pytest.raises(DecodeError) as from_path:
        decode(str(path))
    assert str(from_path.value) == str(from_bytes.value)


def test_non_finite_samples_are_refused_from_a_path(tmp_path):
    y = music()
    y[100:200] = np.nan
    path = tmp_path / "nan.wav"
    sf.write(str(path), y, 44100, subtype="FLOAT")
    with pytest.raises(DecodeError, match="non-finite"):
        decode(str(path))
