"""Small real stages used by the runner tests (they compute from the decoded audio)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from songmill.annotate.base import RUNTIME, Stage, StageConfig, StageUnavailable
from songmill.data_schema.tables import register_table

register_table("test_level", [pa.field("rms", pa.float64()), pa.field("gain", pa.float64())])
register_table("test_derived", [pa.field("rms_db", pa.float64())])


@dataclass
class LevelConfig(StageConfig):
    gain: float = 1.0
    delay_s: float = field(
        default=0.0, metadata=RUNTIME
    )  # slows the stage so a test can kill it mid-run
    fail_on_substring: str = "broken"
    weights: str = ""


class LevelStage(Stage):
    name = "test_level"
    version = 1
    table = "test_level"
    config_class = LevelConfig

    def setup(self) -> None:
        if self.config.weights and not os.path.exists(self.config.weights):
            raise StageUnavailable(f"missing weights file {self.config.weights}: copy it there")

    def process_track(self, track):
        if self.config.fail_on_substring and self.config.fail_on_substring in track.uri:
            raise ValueError(f"refusing {os.path.basename(track.uri)}")
        time.sleep(self.config.delay_s)
        audio, _ = track.audio()
        return {
            "rms": float(np.sqrt(np.mean(audio**2))) * self.config.gain,
            "gain": self.config.gain,
        }


class DerivedStage(Stage):
    """Reads the level stage's rows: exercises `reads` / `requires` within one run."""

    name = "test_derived"
    table = "test_derived"
    reads = ("test_level",)
    requires = ("test_level",)

    def process_track(self, track):
        return {"rms_db": 20 * np.log10(max(track.inputs["test_level"]["rms"], 1e-9))}


register_table("test_worker", [pa.field("pid", pa.int64()), pa.field("setups", pa.int64())])
register_table("test_gpu_worker", [pa.field("pid", pa.int64()), pa.field("setups", pa.int64())])
# setup() calls per stage class in this process: a model loads once per worker, not once per task.
SETUP_CALLS: dict[str, int] = {}


@dataclass
class WorkerConfig(StageConfig):
    # Kill this worker process on its `kill_after`-th track, once per marker file (the first
    # process to create the marker dies; a re-run finds it and goes on).
    kill_marker: str = field(default="", metadata=RUNTIME)
    kill_after: int = field(default=2, metadata=RUNTIME)


class WorkerStage(Stage):
    """Records which process computed each row and how often that process set the stage up."""

    name = "test_worker"
    table = "test_worker"
    config_class = WorkerConfig

    def setup(self) -> None:
        SETUP_CALLS[self.name] = SETUP_CALLS.get(self.name, 0) + 1
        self.done_here = 0

    def process_track(self, track):
        self.done_here += 1
        if self.config.kill_marker and self.done_here >= self.config.kill_after:
            try:
                os.close(os.open(self.config.kill_marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                pass
            else:
                os.kill(os.getpid(), 9)  # SIGKILL: no cleanup, exactly like an OOM kill
        track.audio()
        return {"pid": os.getpid(), "setups": SETUP_CALLS[self.name]}


class GpuWorkerStage(WorkerStage):
    name = "test_gpu_worker"
    table = "test_gpu_worker"
    resources = "gpu"
