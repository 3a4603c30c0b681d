#!/usr/bin/env bash
# Sets up songmill in ./.venv (idempotent). Offline-safe: needs only the package registries.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=".venv/bin/pip --disable-pip-version-check -q"
# The fingerprint stage needs libchromaprint (Debian's libchromaprint-tools, which also brings
# fpcalc). Installed only when missing.
if ! ldconfig -p 2>/dev/null | grep -q libchromaprint && command -v apt-get >/dev/null; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q libchromaprint-tools
fi
# torch first and pinned: the CPU wheel of 2.13.0 is on local disk here; an unpinned torch would
# pull gigabytes of CUDA wheels.
$PIP install "torch==2.13.0"
$PIP install -e ".[test]"
# These declare torchaudio (demucs) or an unpinned torch (openai-whisper) as dependencies, which
# would replace the torch above; their real needs are installed by the line before.
$PIP install --no-deps -r requirements-nodeps.txt
echo "songmill is set up in .venv"
