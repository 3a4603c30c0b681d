"""Worker-process setup: the allocator tuning that keeps Dask workers as fast per track as one
process (Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = """
import ctypes, sys
import numpy as np
from songmill.flows.jobs import tune_allocator

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "tuned":
    assert tune_allocator()
    assert not tune_allocator()  # once per process
before, mapped = libc.mallinfo2().hblkhd, 0
for _ in range(3):
    a = np.ones(1 << 21)  # 16 MiB, about one decoded 30 s stereo clip at 44.1 kHz in float64
    mapped = max(mapped, libc.mallinfo2().hblkhd - before)  # bytes newly held in mmap'd blocks
    del a
print(mapped)
"""


def _mmapped_bytes(mode: str) -> int:
    env = dict(os.environ, MALLOC_TRIM_THRESHOLD_="65536")  # what Dask's nanny sets
    out = subprocess.run([sys.executable, "-c", PROBE, mode], env=env, capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt / mallinfo2")
def test_tuned_allocator_serves_audio_buffers_from_the_heap():
    # Untuned, every clip-sized buffer is a fresh mmap (zeroed pages, unmapped on free); tuned,
    # it comes from the heap and freed memory is reused.
    assert _mmapped_bytes("plain") >= 16 << 20
    assert _mmapped_bytes("tuned") < 1 << 20
