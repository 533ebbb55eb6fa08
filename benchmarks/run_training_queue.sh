#!/usr/bin/env bash
# The long CPU runs as two single-threaded queues side by side (on 2 cores this beats one 2-thread queue).
# Resumable: each finished CV fold is cached, a trained shipped model is skipped if present.
#   nohup bash benchmarks/run_training_queue.sh > runs/queue.log 2>&1 &
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
W=src/napari_spermmorph/weights
(
  export OMP_NUM_THREADS=1
  [ -f $W/hushem-4class.safetensors ] || $PY benchmarks/train_shipped.py --dataset hushem
  [ -f $W/smids-3class.safetensors ] || $PY benchmarks/train_shipped.py --dataset smids
) > runs/queue_shipped.log 2>&1 &
(
  export OMP_NUM_THREADS=1
  $PY benchmarks/bench_classifier.py --dataset hushem --models effnet_cbam,effnet,simplecnn
  $PY benchmarks/bench_classifier.py --dataset smids --models effnet_cbam,effnet,simplecnn
) > runs/queue_cv.log 2>&1 &
wait
