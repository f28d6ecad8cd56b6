#!/usr/bin/env bash
# Everything that needs a GPU, in one go (under 5 minutes on one H100): the GPU tests, a bf16 training run,
# a compiled one, 2-GPU DDP when there are 2 GPUs, and the GPU benchmark; prints the figures, then the
# steps that failed (exit 1 if any). Usage: scripts/gpu_check.sh  (PYTHON=... to pick the interpreter).
# Needs the project's dependencies in $PYTHON; the repo's src/ is put on PYTHONPATH (no install needed).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
WORK=$(mktemp -d)
FAILED=()

fail_fast() { echo "gpu_check: $1" >&2; exit 1; }
command -v nvidia-smi >/dev/null || fail_fast "no nvidia-smi: this machine has no NVIDIA driver"
"$PYTHON" -c "import torch, lightning, hydra, torchmetrics, tensorboard" 2>/dev/null \
    || fail_fast "$PYTHON lacks a dependency (torch, lightning, hydra-core, torchmetrics, tensorboard): pip install -e ."
"$PYTHON" -c "import sys, torch; sys.exit(not torch.cuda.is_available())" \
    || fail_fast "torch $("$PYTHON" -c 'import torch; print(torch.__version__)') sees no CUDA GPU (a CPU build?)"
GPUS=$(nvidia-smi -L | wc -l)

echo "== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PYTHON" -c "import torch, lightning, hydra
print(f'torch {torch.__version__} (CUDA {torch.version.cuda}), lightning {lightning.__version__}, hydra {hydra.__version__}')
print(f'{torch.cuda.device_count()} GPU(s), bf16 supported: {torch.cuda.is_bf16_supported()}')"

# step NAME COMMAND...: runs it with its output in $WORK/NAME.log; prints the summary lines, or the tail.
step() {
    local name=$1 start=$SECONDS
    shift
    echo
    echo "== $name"
    if "$@" >"$WORK/$name.log" 2>&1; then
        grep -E "^(best val loss|stopped|batch|[0-9]+ passed|.*tokens/s|dropout_vs_none|trainer_vs_plain)" "$WORK/$name.log" | grep -v "it/s" || true
        echo "ok ($((SECONDS - start)) s)"
    else
        tail -n 25 "$WORK/$name.log"
        echo "FAILED ($((SECONDS - start)) s; full log: $WORK/$name.log)"
        FAILED+=("$name")
    fi
}

# A short run of the default model: 64 windows of 256 characters per step.
RUN=(data.block_size=256 data.batch_size=64 trainer.max_steps=300 trainer.val_check_interval=150
    callbacks.sample_generation.every_n_steps=150 test=false "paths.log_dir=$WORK/logs")

step gpu_tests "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_gpu.py
step train_bf16 "$PYTHON" scripts/train.py trainer=gpu "${RUN[@]}"
step train_bf16_compiled "$PYTHON" scripts/train.py trainer=gpu model.compile=true "${RUN[@]}"
echo "(its tokens/s includes the one-off compile; the benchmark times steady state)"
if [ "$GPUS" -ge 2 ]; then
    step ddp_2_gpus "$PYTHON" scripts/train.py trainer=ddp trainer.devices=2 "${RUN[@]}"
else
    echo; echo "== ddp_2_gpus: skipped ($GPUS GPU)"
fi
step benchmark timeout 180 "$PYTHON" scripts/benchmark.py --suite training --preset gpu-shakespeare --quick
step dropout_benchmark timeout 180 "$PYTHON" scripts/benchmark.py --suite dropout --quick trainer=gpu

echo
if [ ${#FAILED[@]} -gt 0 ]; then
    echo "gpu_check: FAILED: ${FAILED[*]}"
    exit 1
fi
echo "gpu_check: all passed (logs in $WORK)"
