#!/usr/bin/env bash
# The whole device check of issue 19 in one call (at most ~8 minutes), from the repository root,
# installing nothing:
#   1. environment (GPU, driver, versions)                      -> $OUT/env.txt
#   2. the CUDA tests: pytest -m cuda                            -> $OUT/pytest-cuda.txt, .xml
#   3. compute-sanitizer memcheck of every fused kernel at a small shape (benchmarks.memcheck_kernels,
#      PYTORCH_NO_CUDA_MEMORY_CACHING=1 so out-of-bounds accesses are not hidden by torch's pool)
#                                                                -> $OUT/memcheck.txt
#   4. the kernel suite, then the sampler suite (python -m benchmarks --check): JSON rewritten
#      after every row and per suite                             -> $OUT/benchmarks.json,
#                                                                   $OUT/{kernels,sampler}.json, .md
# Each step has its own time limit and the script goes on after a failure; the exit status is
# the number of failed steps. Results land in $OUT (the device tool's output folder; default
# ./out/gpu_check, ignored by git).
#
#   bash benchmarks/gpu_check.sh           # on the device
#   bash benchmarks/gpu_check.sh --dry     # CPU end-to-end check at tiny sizes: the same steps,
#                                          # pytest -m cuda collected only, memcheck workload in the
#                                          # Triton interpreter without the sanitizer, --quick suites
#
# diffusers (the sampler suite's peer) is not on the device image: put its wheel and those of its
# missing dependencies in .whl/ (ignored by git; `pip download diffusers -d .whl` on a machine
# with network). They are unpacked into a temporary folder on PYTHONPATH, not installed.
set -u
cd "$(dirname "$0")/.."
DRY=0
[ "${1:-}" = "--dry" ] && DRY=1
OUT="${OUT:-out/gpu_check}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python}"
FAILED=0
START=$(date +%s)

step() {  # step NAME LIMIT_S LOGFILE COMMAND...
    local name=$1 limit=$2 log=$3
    shift 3
    local t0=$(date +%s)
    echo "[gpu_check] $name (limit ${limit}s) ..." | tee -a "$OUT/summary.txt"
    timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1
    local rc=$?
    local dt=$(( $(date +%s) - t0 ))
    tail -n 3 "$log" | sed 's/^/    /'
    if [ $rc -eq 0 ]; then
        echo "[gpu_check] $name: ok in ${dt}s" | tee -a "$OUT/summary.txt"
    else
        [ $rc -eq 124 ] && echo "[gpu_check] $name: TIMED OUT after ${limit}s" | tee -a "$OUT/summary.txt"
        echo "[gpu_check] $name: FAILED (exit $rc) in ${dt}s, log $log" | tee -a "$OUT/summary.txt"
        FAILED=$((FAILED + 1))
    fi
}

: >"$OUT/summary.txt"

# wheels carried in .whl/ (e.g. diffusers): unpacked, put on PYTHONPATH, nothing installed
if ls .whl/*.whl >/dev/null 2>&1; then
    WHL_DIR="$(mktemp -d)"
    for w in .whl/*.whl; do "$PY" -m zipfile -e "$w" "$WHL_DIR" >/dev/null; done
    export PYTHONPATH="$PYTHONPATH:$WHL_DIR"  # after the repo and the image's own packages
    echo "[gpu_check] wheels from .whl/ on PYTHONPATH: $(ls .whl | tr '\n' ' ')" | tee -a "$OUT/summary.txt"
fi

{
    date -u +"date %Y-%m-%dT%H:%M:%SZ"
    echo "commit $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo +dirty)"
    nvidia-smi -L 2>/dev/null || echo "nvidia-smi: not available"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv 2>/dev/null
    "$PY" - <<'EOF'
import importlib, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device", p.name, "sm", f"{p.major}.{p.minor}", "SMs", p.multi_processor_count)
for m in ("triton", "cupy", "diffusers", "numpy"):
    try:
        print(m, importlib.import_module(m).__version__)
    except Exception as e:  # noqa: BLE001
        print(m, "absent:", type(e).__name__)
EOF
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

if [ $DRY -eq 1 ]; then
    # CPU: the CUDA tests are collected (they must all be selected by -m cuda), not run
    step "pytest -m cuda (collect only, dry)" 120 "$OUT/pytest-cuda.txt" \
        "$PY" -m pytest -m cuda --collect-only -q -p no:cacheprovider
    step "memcheck workload (Triton interpreter, no sanitizer, dry)" 120 "$OUT/memcheck.txt" \
        env TRITON_INTERPRET=1 "$PY" -m benchmarks.memcheck_kernels --device cpu
    SUITE_ARGS=(--quick --device cpu --no-compile)
else
    step "pytest -m cuda" 110 "$OUT/pytest-cuda.txt" \
        "$PY" -m pytest -m cuda -q -p no:cacheprovider --junitxml "$OUT/pytest-cuda.xml"
    SANITIZER="$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1)"
    if [ -n "$SANITIZER" ]; then
        step "compute-sanitizer memcheck" 90 "$OUT/memcheck.txt" \
            env PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SANITIZER" --tool memcheck --error-exitcode 1 \
            --target-processes all "$PY" -m benchmarks.memcheck_kernels --device cuda
    else
        echo "[gpu_check] compute-sanitizer not found: memcheck NOT run; running the workload alone" | tee -a "$OUT/summary.txt"
        step "memcheck workload without the sanitizer" 60 "$OUT/memcheck.txt" \
            "$PY" -m benchmarks.memcheck_kernels --device cuda
        FAILED=$((FAILED + 1))
    fi
    SUITE_ARGS=(--check)
fi

for suite in kernels sampler; do
    limit=$([ $suite = kernels ] && echo 170 || echo 100)
    step "benchmarks suite $suite" "$limit" "$OUT/$suite.log" \
        "$PY" -m benchmarks --suite "$suite" "${SUITE_ARGS[@]}" --json "$OUT/$suite.json" \
        --md "$OUT/$suite.md"
done

echo "[gpu_check] done in $(( $(date +%s) - START ))s, $FAILED failed step(s); results in $OUT" | tee -a "$OUT/summary.txt"
exit $FAILED
