#!/usr/bin/env bash
# Tune the fused linear-attention kernels, then measure the op, recovery and end-to-end rows with
# the tuned configs, all in the same run (about 14 min on one H200: more than one 10-minute device
# call; `hedgehog_gpu_session.sh recovery` runs the recovery stage alone, about 7 min). Results go to
# ${OUT:-benchmarks/results}: linear_attention_tuning.json + tuned_configs.py (the table to commit:
# cp "$OUT/tuned_configs.py" lincompress/kernels/tuned_configs.py), linear_attention.json,
# recovery_hedgehog/recovery.json, e2e_hedgehog.json. Every stage has a wall-clock limit, writes its
# JSON as it goes, and a stage that fails does not stop the next one. Needs diffusers for the last two.
#
# `hedgehog_gpu_session.sh fwd` (at most 120 s): re-tune only Hedgehog's forward passes (state and
# output kernels, D128 and D64) and re-measure the op: linear_attention_tuning_hedgehog_fwd.json,
# tuned_configs.py (the committed table with those kernels replaced, every other entry kept) and
# linear_attention.json.
set -uo pipefail
cd "$(dirname "$0")/.."
R=${OUT:-benchmarks/results}
mkdir -p "$R"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
stage() {  # stage <limit s> <command...>
    local limit=$1; shift
    echo "== [$(date +%T)] $* (limit ${limit} s)"
    timeout --signal=INT --kill-after=10 "$limit" "$@"
    local rc=$?
    echo "== [$(date +%T)] exit $rc"
}
if [ "${1:-}" = "recovery" ]; then
    stage 570 python benchmarks/recovery.py --skip-tiny --frames 21 --timed-steps 3 --warmup-steps 2 \
        --out "$R/recovery_hedgehog"
    exit 0
fi
if [ "${1:-}" = "fwd" ]; then
    T="$R/linear_attention_tuning_hedgehog_fwd.json"
    stage 55 python benchmarks/tune_linear_attention.py --maps hedgehog --units state,output --budget-s 40 \
        --json "$T" --table "$R/tuned_configs.py"
    if [ -f "$T" ]; then
        export LINCOMPRESS_LINEAR_ATTENTION_CONFIGS="$T"
    fi
    stage 60 python benchmarks/linear_attention.py --shapes wan-1.3b --rep-ms 40 --out "$R/linear_attention.json"
    exit 0
fi
stage 160 python benchmarks/tune_linear_attention.py --budget-s 120 --json "$R/linear_attention_tuning.json" --table "$R/tuned_configs.py"
if [ -f "$R/linear_attention_tuning.json" ]; then
    export LINCOMPRESS_LINEAR_ATTENTION_CONFIGS="$R/linear_attention_tuning.json"
fi
stage 70 python benchmarks/linear_attention.py --shapes wan-1.3b --rep-ms 60 --out "$R/linear_attention.json"
stage 570 python benchmarks/recovery.py --skip-tiny --frames 21 --timed-steps 3 --warmup-steps 2 --out "$R/recovery_hedgehog"
stage 140 python benchmarks/e2e.py --configs wan-1.3b:compile --feature-maps hedgehog --targets 0.7,1.0 \
    --extra relu@0.7 --deadline-s 125 --time-per-variant-s 2 --json "$R/e2e_hedgehog.json"
