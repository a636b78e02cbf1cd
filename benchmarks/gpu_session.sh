#!/usr/bin/env bash
# The first command of a session that has a CUDA machine: the self-check, then gpu_check.py's
# checks, table, targets and tile sweep, every output under $OUT (default gpu_session_out/), named
# by card and date, ready to commit to docs/benchmarks/. About 6 minutes on one H100/H200.
#
#   bash benchmarks/gpu_session.sh               # on the CUDA machine, from the repository root
#   bash benchmarks/gpu_session.sh --cpu-smoke   # the same steps on the CPU at tiny sizes (tests it)
#
# The machine runs the working tree (PYTHONPATH=.). Where pytorch-metric-learning is not installed
# there (a bare CUDA image), carry it as a wheel in .whl/ (ignored by git; it is pure Python):
#   pip download --no-deps -d .whl pytorch-metric-learning==2.9.0
# and this script installs every .whl/*.whl into /tmp/site first. Where a remote runner copies the
# tree over, send .whl/ with it and give the command a limit of at least 540 s.
# Exit status: non-zero when the self-check or gpu_check's checks fail, or either is cut off by its
# deadline (124; missed speed targets do not count).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu_session_out}
mkdir -p "$out"
py=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "gpu_session.sh: installing .whl/*.whl failed" >&2; exit 2; }
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1

check_args=()
gpu_args=()
if [ "${1:-}" = "--cpu-smoke" ]; then
    check_args=(--quick --device cpu)
    gpu_args=(--cpu-smoke)
elif [ $# -gt 0 ]; then
    echo "gpu_session.sh: unknown argument $1 (only --cpu-smoke)" >&2
    exit 2
fi
card=$("$py" -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')" \
    | tr -c 'A-Za-z0-9\n' '_' | tr '[:upper:]' '[:lower:]')
tag=${card}_$(date -u +%F)
echo "gpu_session.sh: $tag, outputs in $out/"
nvidia-smi >"$out/nvidia_smi_$tag.txt" 2>&1 || true

# One deadline for the whole script (SESSION_S, default 520 s: a 540 s command limit less a
# margin), so that it ends, and keeps its files, before the machine's timeout: the self-check gets at
# most 200 s, gpu_check what is left, its table's budget being that less the tile sweep's 80 s and
# 30 s of slack. Both write their JSON as they go, so a step cut off keeps what it measured.
t0=$SECONDS
session_s=${SESSION_S:-520}
export TORCHINDUCTOR_COMPILE_THREADS=${TORCHINDUCTOR_COMPILE_THREADS:-1}  # the compile anchor's first call
timeout -k 5 200 "$py" -m vse_losses.check "${check_args[@]}" --json "$out/self_check_$tag.json" 2>&1 \
    | tee "$out/self_check_$tag.txt"
check_status=${PIPESTATUS[0]}
left=$((session_s - (SECONDS - t0)))
if [ ${#gpu_args[@]} -eq 0 ]; then
    budget=$((left - 110))
    [ "$budget" -gt 250 ] && budget=250
    if [ "$budget" -lt 60 ]; then
        gpu_args=(--budget-s 60 --no-sweep)
    elif [ "$budget" -lt 120 ]; then
        gpu_args=(--budget-s "$budget" --no-sweep)
    else
        gpu_args=(--budget-s "$budget")
    fi
    echo "gpu_session.sh: ${left} s left: gpu_check ${gpu_args[*]}"
fi
[ "$left" -lt 30 ] && left=30
timeout -k 5 "$left" "$py" benchmarks/gpu_check.py "${gpu_args[@]}" --md "$out/gpu_check_$tag.md" \
    --json "$out/gpu_check_$tag.json" 2>&1 | tee "$out/gpu_check_$tag.log"
gpu_status=${PIPESTATUS[0]}
echo "gpu_session.sh: self-check exit $check_status, gpu_check exit $gpu_status"
[ "$check_status" -eq 0 ] && [ "$gpu_status" -eq 0 ]
