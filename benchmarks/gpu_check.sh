#!/usr/bin/env bash
# The GPU check on a lent card in one command: install the wheels `make gpu-wheels` put in .whl (the
# machine has no package index), then run benchmarks/gpu_check.py on the GPU into $OUT/gpu-check
# (./gpu-check when OUT is unset), its output also in log.txt there. Arguments go to gpu_check.py
# (e.g. --parts steps, --budgets 120,120,300). Environment: PYTHON (python3), WHEELS (.whl).
set -uo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3} wheels=${WHEELS:-.whl} out=${OUT:-.}/gpu-check
mkdir -p "$out"
if compgen -G "$wheels/*.whl" >/dev/null; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$wheels"/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
else
    echo "no wheels in $wheels (make gpu-wheels): using what $python has" >&2
    export PYTHONPATH=$PWD
fi
data=()
[ -d "$wheels/mnist" ] && data=(--mnist-dir "$wheels/mnist")
"$python" -c "import maar_plugin.objectives, maar_plugin.verification, auto_LiRPA, highspy, onnx2torch, numpy, torch
print('numpy', numpy.__version__, 'torch', torch.__version__, 'auto_LiRPA', auto_LiRPA.__version__)" || exit 1
PYTHONUNBUFFERED=1 "$python" benchmarks/gpu_check.py --device cuda --out "$out" "${data[@]}" "$@" 2>&1 \
    | tee "$out/log.txt"
