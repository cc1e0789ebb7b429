#!/usr/bin/env bash
# The full-scale rows on a lent GPU: `maar reproduce` with several runs side by side on the card (and
# the CPU cores for the complete verification), stopped after TIME_LIMIT seconds (it resumes), then the
# results packed small enough to bring back (benchmarks/pack_reproduce.py).
# Usage: benchmarks/gpu_reproduce.sh SETTING OUT_DIR PACK_DIR
# Environment: MODEL (dm-small), OBJECTIVES (the six rows), SEEDS (0,1,2), JOBS (8),
#              TIME_LIMIT (seconds for the reproduce step; default unlimited), MAAR (the maar command),
#              PYTHON (python3).
set -u
setting=$1 out=$2 pack=$3
args=(reproduce "$setting" --model "${MODEL:-dm-small}" --seeds "${SEEDS:-0,1,2}" --jobs "${JOBS:-8}"
      --device cuda --out "$out" --no-progress)
[ -n "${OBJECTIVES:-}" ] && args+=(--objectives "$OBJECTIVES")
timeout "${TIME_LIMIT:-0}" ${MAAR:-maar} "${args[@]}"
${PYTHON:-python3} "$(dirname "$0")/pack_reproduce.py" "$out" "$pack"
