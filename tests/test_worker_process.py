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
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], env=env, capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt / mallinfo2")
def test_tuned_allocator_serves_audio_buffers_from_the_heap():
    # Untuned, every clip-sized buffer is a fresh mmap (zeroed pages, unmapped on free); tuned,
    # it comes from the heap and freed memory is reused.
    assert _mmapped_bytes("plain") >= 16 << 20
    assert _mmapped_bytes("tuned") < 1 << 20


FORKED_PROBE = """
import multiprocessing, os, sys
from songmill.flows.executors import start_worker_forkserver

def report(queue):
    queue.put({"scipy.signal": "scipy.signal" in sys.modules, "prefect": "prefect.task_engine" in sys.modules,
               "threads": os.environ.get("OPENBLAS_NUM_THREADS"), "hash_seed": os.environ.get("PYTHONHASHSEED")})

if __name__ == "__main__":
    assert "scipy.signal" not in sys.modules
    assert start_worker_forkserver(["songmill.annotate.qc:QCStage"])
    assert "scipy.signal" not in sys.modules and os.environ.get("OPENBLAS_NUM_THREADS") is None  # driver unchanged
    context = multiprocessing.get_context("forkserver")
    queue = context.Queue()
    child = context.Process(target=report, args=(queue,))
    child.start()
    print(queue.get(timeout=120))
    child.join()
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX fork server")
def test_local_cluster_workers_fork_from_a_server_with_stage_imports_and_worker_environment(
    tmp_path,
):
    # A forked worker has the stage's lazy imports and Prefect's task engine already, and the
    # environment the nanny gives spawned workers (BLAS reads it at import, in the server).
    script = tmp_path / "probe.py"  # a file: a fork server needs an importable __main__ path
    script.write_text(FORKED_PROBE)
    env = {
        k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "PYTHONHASHSEED")
    }
    out = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    got = eval(out.stdout.strip().splitlines()[-1])  # noqa: S307 - our own probe's dict
    assert got == {"scipy.signal": True, "prefect": True, "threads": "1", "hash_seed": "6640"}
