#!/usr/bin/env bash
# The course's CUDA checks on a GPU machine, in one command, from the repository root:
#
#     OUT=/some/folder bash benchmarks/gpu_check.sh
#
# Installs the wheels carried in .whl/ (e.g. bitsandbytes) into /tmp/site, puts this checkout on PYTHONPATH
# (the package is not pip-installed there), prints nvidia-smi and the versions that matter, then runs
# tests/test_cuda.py and the CUDA tests of tests/test_practices.py. Writes $OUT/log.txt (everything printed)
# and $OUT/junit.xml (one entry per test, with durations). Exit status: pytest's (124: it ran past 420 s).
set -uo pipefail

cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder that receives log.txt and junit.xml}"
mkdir -p "$OUT"
LOG="$OUT/log.txt"
: > "$LOG"

if compgen -G ".whl/*.whl" > /dev/null; then
    echo "installing carried wheels: $(ls .whl/*.whl | xargs -n1 basename | tr '\n' ' ')" | tee -a "$LOG"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        2>&1 | tee -a "$LOG" && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# offline (no model hub), no figures on screen, and no notebook statistics written into the checkout
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg LLM_COURSE_NO_RECORD=1

{
    echo "== $(date -u '+%Y-%m-%d %H:%M:%S UTC'), $(git rev-parse --short HEAD 2>/dev/null || echo 'no git')"
    nvidia-smi || echo "nvidia-smi failed"
    python3 - <<'EOF'
import importlib
import platform

import torch

print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"cuda available: {torch.cuda.is_available()}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"GPU: {p.name}, {p.total_memory / 2**30:.1f} GiB, compute capability {p.major}.{p.minor}, "
          f"bf16: {torch.cuda.is_bf16_supported()}")
for name in ("transformers", "peft", "accelerate", "bitsandbytes", "onnx", "onnxruntime", "onnxscript",
             "safetensors", "tokenizers", "pytest", "hypothesis", "psutil", "nbval", "tensorrt"):
    try:
        module = importlib.import_module(name)
        extra = ""
        if name == "onnxruntime":
            extra = f" providers {module.get_available_providers()}"
        print(f"{name} {getattr(module, '__version__', '?')}{extra}")
    except Exception as e:  # absent or broken: say which, and keep going
        print(f"{name}: not importable ({type(e).__name__}: {str(e)[:120]})")
import llm_course
print(f"llm_course from {llm_course.__file__}")
EOF
} 2>&1 | tee -a "$LOG"

# tests/test_cuda.py entirely (its module name matches "cuda"); in test_practices.py the tests about CUDA:
# test_fp16_with_grad_scaler_on_cuda_tracks_fp32, test_empty_cache_*. -p no:nbval: notebooks are not run here.
timeout 420 python3 -m pytest -p no:cacheprovider -p no:nbval -q -rA \
    tests/test_cuda.py tests/test_practices.py -k "cuda or empty_cache" \
    --junitxml="$OUT/junit.xml" 2>&1 | tee -a "$LOG"
status=${PIPESTATUS[0]}
echo "pytest exit status: $status" | tee -a "$LOG"
exit "$status"
