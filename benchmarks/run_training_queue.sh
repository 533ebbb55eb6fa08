#!/usr/bin/env bash
# The long CPU runs, in order, resumable (each finished fold is cached; a trained model is skipped if present).
# Run in the background:  nohup bash benchmarks/run_training_queue.sh > runs/queue.log 2>&1 &
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
W=src/napari_spermmorph/weights
[ -f $W/hushem-4class.safetensors ] || $PY benchmarks/train_shipped.py --dataset hushem
$PY benchmarks/bench_classifier.py --dataset hushem --models effnet_cbam,effnet,simplecnn
[ -f $W/smids-3class.safetensors ] || $PY benchmarks/train_shipped.py --dataset smids
$PY benchmarks/bench_classifier.py --dataset smids --models effnet_cbam,effnet,simplecnn
