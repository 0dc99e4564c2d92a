#!/usr/bin/env bash
# The GPU checks of the model and the trainer, in one run (a lent GPU machine has minutes, not hours):
#
#   bash benchmarks/gpu_check.sh MANIFEST [OUT [STEP ...]]
#   bash benchmarks/gpu_check.sh MANIFEST out model trainer cli     # fits one 10-minute device call
#   bash benchmarks/gpu_check.sh - out compile                      # 370 s of it compiling (H100)
#
# MANIFEST: a spectrogram manifest whose shard paths exist on that machine (its absolute paths are
# what the shards were ingested to); "-" when no step needs one. OUT (default: gpu-check) gets the
# logs and the kernel profiles. A machine without the loader's packages (webdataset, braceexpand,
# numcodecs, zstandard, google-crc32c) installs them from ./.whl if that folder holds their wheels.
# STEPs, each time-limited (default: all four, which take longer than one 10-minute device call):
#   1. model: large, bf16, eager, batches 8 and 16: ms/step, TFLOP/s, MFU (+ the vanilla reference and
#      our transformer blocks alone, without the U-Net),
#      and the kernels of one step by GPU time (benchmarks/bench_model.py)
#   2. trainer: large, synthetic vs shard batches vs the loader alone, with the masked input built on
#      the GPU and by the workers (benchmarks/bench_train.py)
#   3. CLI: torchrun pretrain (pretrain preset) 20 steps, then --resume to 30 (checkpoints, exit codes)
#   4. compile: large under torch.compile (inductor): compile time, ms/step, MFU, kernels of one step
set -u
manifest=${1:?usage: bash benchmarks/gpu_check.sh MANIFEST [OUT [STEP ...]]}
out=${2:-gpu-check}
steps=" ${*:3} "
[ "$steps" = "  " ] && steps=" model trainer cli compile "
mkdir -p "$out"
export PYTHONUNBUFFERED=1
start=$(date +%s)
step() { echo "=== $1 (t=$(( $(date +%s) - start )) s)"; }
wanted() { [[ $steps == *" $1 "* ]]; }

if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, torch.version.cuda)"

if wanted model; then
    step "model"
    timeout 150 python3 -m benchmarks.bench_model --configs --gpu-batch 8 16 --repeats 3 \
        --profile "$out/profile.txt" 2>&1 | tee "$out/model.txt"
fi
if wanted trainer; then
    step "trainer"
    timeout 150 python3 -m benchmarks.bench_train --manifest "$manifest" --configs large --workers 4 --steps 5 \
        --devices cuda 2>&1 | tee "$out/train.txt"
fi
if wanted cli; then
    step "pretrain CLI"
    run=$(mktemp -d)
    sets=(--set train.log_every=5 --set train.checkpoint_every=10 --set train.val_every=0
          --set train.preview_every=0 --set train.effective_batch=8)
    timeout 100 torchrun --nproc_per_node 1 cli.py pretrain --manifest "$manifest" --run-dir "$run" \
        --steps 20 --config pretrain "${sets[@]}" > "$out/pretrain.txt" 2>&1
    echo "pretrain exit $?"
    timeout 60 torchrun --nproc_per_node 1 cli.py pretrain --manifest "$manifest" --run-dir "$run" \
        --steps 30 --resume --config pretrain "${sets[@]}" > "$out/resume.txt" 2>&1
    echo "resume exit $?; checkpoints: $(ls "$run/checkpoints" | tr '\n' ' ')"
    tail -n 1 "$run/metrics.jsonl"
fi
if wanted compile; then
    step "compile"  # large: 370 s to compile on an H100 (16 cores) with a cold cache
    timeout 500 python3 -m benchmarks.bench_model --configs --gpu-batch 8 --repeats 3 --compile --gpu-runs ours \
        --profile "$out/compiled_profile.txt" 2>&1 | tee "$out/compiled.txt"
fi
step "done"
