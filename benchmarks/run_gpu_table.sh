#!/usr/bin/env bash
# A classifier table on one CUDA GPU: one bench_classifier.py process per row, all started at once (a Lite network
# at batch 16-32 leaves most of a large GPU idle, so rows run side by side), each running its folds in order.
# Resumable like bench_classifier.py: finished folds are cached and skipped. LIMIT (seconds, 0 = none) stops every
# row at a time limit, keeping the folds it finished.
#   bash benchmarks/run_gpu_table.sh hushem
#   LIMIT=380 bash benchmarks/run_gpu_table.sh smids
#   ROWS=effnet_cbam,simplecnn SIZE=224 bash benchmarks/run_gpu_table.sh hushem
set -uo pipefail
cd "$(dirname "$0")/.."
DATASET=${1:?usage: run_gpu_table.sh hushem|smids}
PY=${PY:-.venv/bin/python}; SIZE=${SIZE:-224}; FOLDS=${FOLDS:-0,1,2,3,4}; THREADS=${THREADS:-2}; LIMIT=${LIMIT:-0}
case $DATASET in
  hushem) DEFAULT=simplecnn,effnet,effnet_cbam,effnet_cbam_smids_noval,lite1_cbam_noval,lite1_cbam_smidsnh_noval,effnet_cbam_smids_noval_s1,lite1_cbam_noval_s1,lite1_cbam_smidsnh_noval_s1 ;;
  smids) DEFAULT=lite1_cbam_nohold,lite1_cbam_nohold_s1,effnet_cbam_nohold,effnet_cbam,simplecnn ;;
  *) echo "unknown dataset $DATASET" >&2; exit 2 ;;
esac
ROWS=${ROWS:-$DEFAULT}
DATA_ARGS=(); [ -n "${DATA:-}" ] && DATA_ARGS=(--data "$DATA")
mkdir -p runs
for row in ${ROWS//,/ }; do
  OMP_NUM_THREADS=$THREADS timeout "$LIMIT" "$PY" benchmarks/bench_classifier.py --dataset "$DATASET" --size "$SIZE" \
    --models "$row" --folds "$FOLDS" --device cuda "${DATA_ARGS[@]}" > "runs/gpu_${DATASET}_${SIZE}_${row}.log" 2>&1 &
done
wait
"$PY" benchmarks/bench_classifier.py --dataset "$DATASET" --size "$SIZE" --aggregate-only "${DATA_ARGS[@]}"
