#!/usr/bin/env bash
# Pretrain `base` in bf16 on a real library for a few minutes and print validation context_gain, the gain
# over the copied guess and unmix_gain (the synthetic voices taken out) over the steps (train/context.py,
# train/pretrain.py): does the objective learn at GPU scale?  One device call:
#
#   bash benchmarks/gpu_pretrain.sh SOURCE [OUT [MINUTES]]
#
# SOURCE: a music library folder (ingested here first, val_fraction 0.15 by artist) or an ingest
# manifest.jsonl whose shard paths exist on this machine.  The development library (/tmp/devset/library,
# 106 min, ~300 MB) is too big to carry to a device machine (64 MiB): copy a part of it that fits
# (e.g. its OGG and MP3 files, one song per album and the Nexuiz songs for validation) into an ignored
# folder of the worktree, e.g. runs/gpu-library, and name it in the run's carry.
# OUT (default: gpu-pretrain) gets the shards, the run directory and the log; MINUTES (default 5) is the
# pretraining's budget (train.minutes: the learning rate decays over it; validation every 250 steps and
# at the end).
# A machine without the loader's packages installs them from ./.whl if that folder holds their wheels.
set -u
source=${1:?usage: bash benchmarks/gpu_pretrain.sh LIBRARY|MANIFEST [OUT [MINUTES]]}
out=${2:-gpu-pretrain}
minutes=${3:-5}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
start=$(date +%s)
step() { echo "=== $1 (t=$(( $(date +%s) - start )) s)"; }

if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site
fi
# The repository root is the package `specbert`: importable without installing through a link to it.
mkdir -p /tmp/specbert-path && ln -sfn "$PWD" /tmp/specbert-path/specbert
export PYTHONPATH=/tmp/specbert-path${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, torch.version.cuda)"

if [ -d "$source" ]; then
    step "ingest $source"
    timeout 180 python3 -m specbert.cli ingest "$source" --out "$out/shards" --workers 8 --no-progress \
        --set ingest.val_fraction=0.15 > "$out/ingest.txt" 2>&1
    echo "ingest exit $?"; tail -n 3 "$out/ingest.txt"
    manifest=$out/shards/manifest.jsonl
else
    manifest=$source
fi

step "pretrain base, bf16, ${minutes} min"
run=$out/run
rm -rf "$run"
sets=(--set train.precision=bf16 --set train.effective_batch=8 --set train.warmup_steps=200
      --set train.steps=100000 --set train.minutes="$minutes" --set train.log_every=50
      --set train.val_every=250 --set train.val_batches=25 --set train.preview_every=500
      --set train.checkpoint_every=1000 --set train.num_workers=6)
timeout -s TERM "$(( minutes * 60 + 150 ))" python3 -m specbert.cli pretrain --config pretrain \
    --manifest "$manifest" --run-dir "$run" --device cuda "${sets[@]}" > "$out/pretrain.txt" 2>&1
echo "pretrain exit $? (124/143: stopped by the guard's time limit)"
grep -i -m 3 "error\|traceback" "$out/pretrain.txt"

step "validation over the steps"
python3 - "$run/metrics.jsonl" <<'EOF'
import json, sys
rules = ("silence", "neighbours", "interpolation", "bin_mean")
records = [json.loads(line) for line in open(sys.argv[1])]
train = [r for r in records if r["split"] == "train"]
if train:
    print(f"train: {train[-1]['step']} steps, {train[-1]['samples_per_s']:.1f} samples/s at the end")
for r in (r for r in records if r["split"] == "val"):
    best = min(rules, key=lambda n: r[f"db_error_{n}"])
    print(f"step {r['step']:>5}: context_gain {r['context_gain']:+.3f}  model {r['db_error']:.2f} dB  "
          f"best trivial {r[f'db_error_{best}']:.2f} dB ({best})  silence {r['db_error_silence']:.2f} dB  "
          f"gain_over_repetition {r['gain_over_repetition']:+.3f}  unmix_gain {r.get('unmix_gain', 0.0):+.3f}")
EOF
