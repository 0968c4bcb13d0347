#!/usr/bin/env bash
# GPU check: run from the repository root on a CUDA machine; done in about ten minutes at most.
#
#     bash benchmarks/gpu_check.sh
#
# 1. setup       python3 -m venv --system-site-packages .venv-gpu (a CUDA torch already installed in the
#                system is used as it is), pip install "torch<2.14" (the CUDA build the index serves;
#                the bound is pyproject's), pip install -e ".[test]"
# 2. nvidia_smi  nvidia-smi
#    env         torch / CUDA / cuDNN / bf16 facts, package versions; stops here without a CUDA torch
# 3. loop_fp32   python benchmarks/loop_overhead.py --device cuda         (parts vs toolkit vs TextBrewer)
#    loop_bf16   python benchmarks/loop_overhead.py --device cuda --bf16  (every forward under bf16 autocast)
# 4. memory      python benchmarks/teacher_memory.py --world-sizes 1     (replicated / zero3 / fsdp, one GPU)
# 5. tests       python -m pytest tests -m "not slow and not distributed" -x -q   (on CUDA; the time left)
#
# Every step writes <step>.log under $OUT (else ./gpu_check_out) and runs under `timeout`, capped by
# what is left of the overall budget; a failed step does not stop the later ones. summary.txt lists
# each step's exit status and seconds and ends with the benchmarks' JSON lines. Nothing on the CPU
# path of the project reads this file.
#
# Knobs (environment): GPU_CHECK_BUDGET (seconds in all, default 570), GPU_CHECK_PYTHON (an existing
# interpreter instead of building .venv-gpu), GPU_CHECK_DEVICE (cuda; cpu only to rehearse the script),
# GPU_CHECK_LOOP_ARGS (default "--steps 20 --rounds 3"), GPU_CHECK_MEMORY_ARGS (default
# "--world-sizes 1"), GPU_CHECK_TESTS (pytest targets, default "tests").
set -u -o pipefail

OUT_DIR="${OUT:-./gpu_check_out}"
BUDGET="${GPU_CHECK_BUDGET:-570}"
DEVICE="${GPU_CHECK_DEVICE:-cuda}"
LOOP_ARGS="${GPU_CHECK_LOOP_ARGS:---steps 20 --rounds 3}"
MEMORY_ARGS="${GPU_CHECK_MEMORY_ARGS:---world-sizes 1}"
TESTS="${GPU_CHECK_TESTS:-tests}"
START=$(date +%s)
mkdir -p "$OUT_DIR"
SUMMARY="$OUT_DIR/summary.txt"
: > "$SUMMARY"
# the source tree itself is importable even where `pip install -e` could not run (no index reachable)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

left() { echo $(( BUDGET - ($(date +%s) - START) )); }

# step NAME CAP COMMAND...: COMMAND under `timeout` min(CAP, time left), its output in NAME.log
step() {
    local name=$1 cap=$2 limit rc began shown
    shift 2
    shown="$*"
    (( ${#shown} > 160 )) && shown="${shown:0:160} ..."
    limit=$(left)
    (( cap < limit )) && limit=$cap
    if (( limit < 10 )); then
        echo "$name: skipped (budget spent)" | tee -a "$SUMMARY"
        return 0
    fi
    began=$(date +%s)
    echo "=== $name (timeout ${limit}s): $shown" | tee "$OUT_DIR/$name.log"
    timeout --kill-after=10 "$limit" "$@" >> "$OUT_DIR/$name.log" 2>&1
    rc=$?
    echo "$name: rc=$rc in $(( $(date +%s) - began ))s$( ((rc == 124)) && echo ' (timed out)')" | tee -a "$SUMMARY"
    return 0
}

SETUP='python3 -m venv --system-site-packages .venv-gpu &&
    .venv-gpu/bin/python -m pip install --upgrade pip &&
    .venv-gpu/bin/python -m pip install "torch<2.14" &&
    .venv-gpu/bin/python -m pip install -e ".[test]"'

ENV_INFO='
import sys
import torch
print("torch", torch.__version__, "| CUDA build", torch.version.cuda, "| cuDNN", torch.backends.cudnn.version())
print("cuda available:", torch.cuda.is_available(), "| devices:", torch.cuda.device_count())
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"  cuda:{i} {p.name}, {p.total_memory / 2**30:.1f} GiB, capability {p.major}.{p.minor}")
if torch.cuda.is_available():
    print("bf16 supported:", torch.cuda.is_bf16_supported())
import accelerate, transformers, distill_toolkit
print("distill_toolkit", distill_toolkit.__version__, "| accelerate", accelerate.__version__,
      "| transformers", transformers.__version__)
if sys.argv[1] == "cuda" and not torch.cuda.is_available():
    sys.exit("no CUDA device visible to torch")
'

if [[ -n "${GPU_CHECK_PYTHON:-}" ]]; then
    PY="$GPU_CHECK_PYTHON"
    echo "setup: skipped, using $PY" | tee -a "$SUMMARY"
else
    step setup 300 bash -c "$SETUP"
    PY=.venv-gpu/bin/python
fi
step nvidia_smi 30 nvidia-smi
step env 60 "$PY" -c "$ENV_INFO" "$DEVICE"
if ! grep -q "^env: rc=0" "$SUMMARY"; then
    echo "no usable $DEVICE torch: benchmarks and tests not run (see $OUT_DIR/env.log)" | tee -a "$SUMMARY"
    exit 1
fi
# shellcheck disable=SC2086  # the *_ARGS knobs and TESTS are word lists
step loop_fp32 120 "$PY" benchmarks/loop_overhead.py --device "$DEVICE" $LOOP_ARGS
# shellcheck disable=SC2086
step loop_bf16 120 "$PY" benchmarks/loop_overhead.py --device "$DEVICE" --bf16 $LOOP_ARGS
# shellcheck disable=SC2086
step memory 150 "$PY" benchmarks/teacher_memory.py $MEMORY_ARGS
# shellcheck disable=SC2086
step tests 600 "$PY" -m pytest $TESTS -m "not slow and not distributed" -x -q -p no:cacheprovider

{
    echo "--- last JSON line of each benchmark"
    for name in loop_fp32 loop_bf16 memory; do
        [[ -f "$OUT_DIR/$name.log" ]] && echo "$name: $(grep '^{' "$OUT_DIR/$name.log" | tail -n 1)"
    done
    echo "total: $(( $(date +%s) - START ))s"
} | tee -a "$SUMMARY"
