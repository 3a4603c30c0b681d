"""Commands songmill suggests, spelled so they run as typed in a fresh shell.

songmill is usually installed in a virtualenv that the user's shell has not activated
(`bash setup.sh && .venv/bin/songmill demo`), so a bare `songmill` or `prefect` would be
`command not found`. Hints name the script next to the running interpreter instead: relative to
the working directory when it lies below it (`.venv/bin/songmill`), else its absolute path.
"""

from __future__ import annotations

import os
import shlex
import sys


def venv_command(name: str = "songmill") -> str:
    """How to call the console script `name` installed beside this interpreter, from any shell."""
    path = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), name)
    if not os.path.exists(path):  # not a virtualenv script (a system install): found on PATH
        return name
    relative = os.path.relpath(path)
    return shlex.quote(relative if not relative.startswith("..") else path)


def runnable(text: str) -> str:
    """`text` with each backticked `songmill ...` command spelled as `venv_command()` spells it.
    Messages made below flows/ (annotate/, train/, data_schema/ cannot import it) say bare
    `songmill ...`; the CLI passes what it prints of them through here so they run as typed."""
    songmill = venv_command()
    return text if songmill == "songmill" else text.replace("`songmill ", f"`{songmill} ")


def activate_hint() -> str | None:
    """`source .venv/bin/activate` for the running virtualenv, or None outside one."""
    activate = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "activate")
    if not os.path.exists(activate):
        return None
    relative = os.path.relpath(activate)
    return f"source {shlex.quote(relative if not relative.startswith('..') else activate)}"
