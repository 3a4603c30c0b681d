#!/usr/bin/env bash
# One GPU check that fits a lent device's 15 minutes: every GPU figure songmill quotes, in under
# 8 minutes on one H100, each step with its peak device memory (nvidia-smi, sampled every 200 ms:
# the whole device, so CTranslate2's and the CUDA context's memory count too).
#
#   benchmarks/gpu_suite.sh [PYTHON]          # PYTHON defaults to .venv/bin/python, then python3
#
# Steps (each under its own time limit, 455 s in all, so one that hangs costs only its share):
#   1. DiT `base` bf16 training step (forward + backward, 240 s = 2584 latent frames): MFU
#   2. ReLU linear attention vs SDPA at 2584 frames, width 2560 (20 heads x 128), fwd and fwd+bwd
#   3. htdemucs (release architecture, random weights) x realtime, and faster-whisper batched
#      (tiny.en, real weights, float16, 16 chunks per batch) x realtime; on CUDA also Whisper
#      large-v3 dimensions through openai-whisper
#   4. captions: Qwen2-Audio-7B size (random weights, bf16) clips/s at batch 8 vs batch 1
#   5. aesthetics (Audiobox Aesthetics size, random weights, bf16) x realtime, batched vs per file
# Without a GPU it says so in one line and exits 0.
set -u
cd "$(dirname "$0")/.."
PY="${1:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_suite: no CUDA GPU here (torch.cuda.is_available() is false); nothing to measure"
  exit 0
fi

OUT="${SONGMILL_BENCH_OUT:-$(mktemp -d /tmp/songmill-gpu-suite-XXXXXX)}"
mkdir -p "$OUT"
echo "gpu_suite: $("$PY" -c 'import torch; print(torch.cuda.get_device_name(0), "torch", torch.__version__)'); logs in $OUT"
SUITE_START=$(date +%s)
SUMMARY=()

step() {  # step NAME SECONDS COMMAND...: run with a time limit, sample device memory, keep the log
  local name="$1" limit="$2"; shift 2
  local log="$OUT/$name.log" mem="$OUT/$name.mem" sampler="" started rc
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 >"$mem" 2>/dev/null &
    sampler=$!
  fi
  started=$(date +%s)
  echo "== $name (limit ${limit} s): $*"
  timeout --signal=INT --kill-after=10 "$limit" "$@" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  [ -n "$sampler" ] && kill "$sampler" 2>/dev/null && wait "$sampler" 2>/dev/null
  local peak="n/a"
  if [ -s "$mem" ]; then peak="$(sort -n "$mem" | tail -1) MiB"; fi
  local status="ok"
  [ "$rc" -eq 124 ] && status="TIMED OUT"
  [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] && status="FAILED rc=$rc"
  echo "-- $name: $status, $(( $(date +%s) - started )) s, device memory peak $peak"
  SUMMARY+=("$name: $status, peak $peak")
}

# -u: unbuffered, so a step stopped at its limit still leaves what it printed.
step dit_mfu 90 "$PY" -u benchmarks/bench_dit_mfu.py --device cuda --preset base --frames 2584 --batch 1 --steps 6 --warmup 2
step attention 40 "$PY" -u benchmarks/bench_attention.py --device cuda --width 2560 --head-dim 128 --frames 2584 --repeats 5
step attention_bwd 40 "$PY" -u benchmarks/bench_attention.py --device cuda --width 2560 --head-dim 128 --frames 2584 --repeats 5 --backward
step separate_asr 100 "$PY" -u benchmarks/bench_separate_asr.py --device cuda --seconds 30 --tracks 4
step captions 140 "$PY" -u benchmarks/bench_captions.py --size full --batch 8 --tracks 8 --token-scale 0.25
step aesthetics 45 "$PY" -u benchmarks/bench_aesthetics.py --device cuda --tracks 8 --seconds 30 --window-batch 32

echo "== gpu_suite summary ($(( $(date +%s) - SUITE_START )) s in all; logs in $OUT)"
for line in "${SUMMARY[@]}"; do echo "   $line"; done
grep -h -E "MFU|samples/s|TFLOP|speedup|^ *2584|x realtime|captions/s|ratio|peak" "$OUT"/*.log 2>/dev/null | sed 's/^/   /'
exit 0
