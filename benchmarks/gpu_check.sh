#!/usr/bin/env bash
# GPU check: what the CPU-only machine cannot run, in at most ~8 minutes on one NVIDIA GPU.
#   1. the gpu-marked tests (tests/gpu): CUDA BEV pooling == CPU, bf16 / fp16 autocast training
#      step, a one-process NCCL DDP step
#   2. per-stage forward latency on the GPU (benchmarks/model_latency.py --device cuda)
#   3. training throughput on the GPU, once benchmarks/train_throughput.py has a --device option
#      (today it trains on the CPU only: the row says so)
# Everything goes into one markdown table, work_dirs/gpu_check/report.md, printed at the end; the
# logs sit next to it. Without an NVIDIA GPU it prints one line and exits 0, so CI can always call it.
#
#     benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PY=.venv/bin/python
OUT=work_dirs/gpu_check
REPORT=$OUT/report.md
BUDGET=480  # seconds for the checks (a first `make venv` on a fresh machine comes on top)

skip() {
    echo "gpu_check: no NVIDIA GPU here; skipped"
    exit 0
}

command -v nvidia-smi >/dev/null 2>&1 || skip
make venv
"$PY" -c 'import torch; assert torch.cuda.is_available()' >/dev/null 2>&1 || skip

END=$((SECONDS + BUDGET))
# Timeout of a step: at most $1 seconds and never past the budget (at least 1: `timeout 0` never fires).
limit() {
    local rest=$((END - SECONDS < $1 ? END - SECONDS : $1))
    echo $((rest > 1 ? rest : 1))
}

mkdir -p "$OUT"
ROWS=()
FAILED=0
row() { ROWS+=("| $1 | ${2//|/\\|} |"); }  # a '|' inside a value would split the cell
# Row "$1": "ok" or why the step failed (exit code $2, timeout's 124; log $3), then detail $4.
# Not in a $(...): FAILED must be set in this shell.
step_row() {
    local verdict=ok
    if (($2 == 124)); then verdict="TIMEOUT (see $3)"; elif (($2 != 0)); then verdict="FAILED, exit $2 (see $3)"; fi
    (($2 == 0)) || FAILED=1
    row "$1" "$verdict${4:+: $4}"
}

timeout 20 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
row "GPU (name, memory, driver)" "$(timeout 20 nvidia-smi --query-gpu=name,memory.total,driver_version \
    --format=csv,noheader | head -n 1)"
row "torch / CUDA / cuDNN / NCCL" "$(timeout "$(limit 60)" "$PY" -c 'import torch
nccl = ".".join(map(str, torch.cuda.nccl.version())) if torch.distributed.is_nccl_available() else "n/a"
print(torch.__version__, torch.version.cuda, torch.backends.cudnn.version(), nccl, sep=" / ")')"

echo "== gpu tests"
rc=0
timeout "$(limit 240)" "$PY" -m pytest -q -m gpu tests/gpu --junitxml="$OUT/pytest.xml" 2>&1 \
    | tee "$OUT/pytest.log" || rc=$?  # pipefail: timeout's / pytest's status, not tee's
step_row "pytest -m gpu tests/gpu" "$rc" "$OUT/pytest.log" "$(tail -n 1 "$OUT/pytest.log" | tr -d '=')"
if [[ -s $OUT/pytest.xml ]]; then  # one row per test: passed / skipped / failed and why
    while IFS=$'\t' read -r name result; do
        row "test $name" "$result"
    done < <("$PY" - "$OUT/pytest.xml" <<'EOF'
import sys
import xml.etree.ElementTree as ET

for case in ET.parse(sys.argv[1]).iter("testcase"):
    verdict = "passed"
    for tag in ("failure", "error", "skipped"):
        node = case.find(tag)
        if node is not None:
            first = (node.get("message") or "").splitlines()[:1]
            verdict = f"{tag}: {first[0][:150] if first else ''}"
    print(f"{case.get('name')}\t{verdict} ({float(case.get('time', 0)):.1f} s)")
EOF
)
fi

echo "== forward latency on the GPU"
rc=0
timeout "$(limit 120)" "$PY" benchmarks/model_latency.py --device cuda --runs 10 --warmup 3 \
    --configs demo nuscenes 2>&1 | tee "$OUT/latency.md" || rc=$?
step_row "latency benchmark (median of 10)" "$rc" "$OUT/latency.md"
# its table: | stage | <config>: <input>, <trunk>, <res> | ... -> one row per stage, configs joined by " / "
while IFS=$'\t' read -r name values; do
    row "$name" "$values"
done < <(awk -F'|' '
    /^\| stage \|/ { for (i = 3; i < NF; i++) { split($i, a, ":"); gsub(/ /, "", a[1])
                                             cfg = cfg (i > 3 ? " / " : "") a[1] }; next }
    /^\|---/ { next }
    /^\| / { v = ""; for (i = 3; i < NF; i++) { gsub(/ /, "", $i); v = v (i > 3 ? " / " : "") $i }
             gsub(/^ +| +$/, "", $2); printf "latency %s (ms, %s)\t%s\n", $2, cfg, v }' "$OUT/latency.md")

echo "== training throughput on the GPU"
# grep without -q reads all of --help: an early exit could SIGPIPE python and, with pipefail, fail the test
if timeout "$(limit 60)" "$PY" benchmarks/train_throughput.py --help 2>/dev/null | grep -- '--device' >/dev/null; then
    rc=0
    timeout "$(limit 120)" "$PY" benchmarks/train_throughput.py --device cuda --steps 10 --warmup 3 2>&1 \
        | tee "$OUT/train_throughput.log" || rc=$?
    step_row "training throughput (samples/s)" "$rc" "$OUT/train_throughput.log" \
        "$(grep -o '\*\*[0-9.]*\*\*' "$OUT/train_throughput.log" | tr -d '*' | head -n 1)"
else
    row "training throughput" "not measured: benchmarks/train_throughput.py has no --device option (CPU only)"
fi

{
    echo "# GPU check, $(date '+%Y-%m-%d %H:%M'), $((SECONDS - END + BUDGET)) s"
    echo
    echo "| check | result |"
    echo "|---|---|"
    printf '%s\n' "${ROWS[@]}"
} > "$REPORT"
echo
cat "$REPORT"
echo "gpu_check: report in $REPORT"
exit "$FAILED"
