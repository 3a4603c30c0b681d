"""Imported once by the fork server that starts a LocalCluster's worker processes (see
executors.start_worker_forkserver): what every worker would import for itself, imported once.

Forking from this process saves each worker the interpreter start and the imports of Prefect's
task engine and of the stages' libraries: on a 2-core machine the workers otherwise spend their
first ~3 s importing, side by side, what the fork server imports once while the driver plans.
"""

from __future__ import annotations

import os

import prefect.task_engine  # noqa: F401 - what runs each task in a worker
import songmill.flows.pipeline  # noqa: F401 - the tasks and the job code
from songmill.annotate import import_stage

# "module:Class" stage targets, set by the executor for the fork server it starts.
STAGES_ENV = "SONGMILL_WORKER_STAGES"

for _target in filter(None, os.environ.get(STAGES_ENV, "").split(",")):
    try:
        import_stage(_target).warm_up()
    except Exception:  # a stage that cannot even import fails in its task, with its own error
        pass
