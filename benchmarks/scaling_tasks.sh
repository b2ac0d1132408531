#!/usr/bin/env bash
# Epoch time against the number of tasks (ToxCast, the same 8,576 molecules), interleaved
# 12 / 617 / 100 tasks, two repetitions, one thread each: the task-scaling rows of speed.py,
# re-measurable alone on an idle machine.
#   benchmarks/scaling_tasks.sh [DATA_DIR]      (PYTHON picks the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-../shared/data}
py=${PYTHON:-python}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 CFT_QUIET=1
tasks=$("$py" -c "import pandas as pd, json, sys; print(json.dumps([c for c in pd.read_csv(sys.argv[1], nrows=1).columns if c != 'smiles']))" "$data/toxcast.csv.gz")
for rep in 1 2; do
  for t in 12 617 100; do
    payload=$("$py" -c "import json, sys; print(json.dumps({'overrides': ['data.path=toxcast.csv.gz', 'data.limit=8576', 'data.tasks=' + json.dumps(json.loads(sys.argv[1])[:int(sys.argv[2])])]}))" "$tasks" "$t")
    echo "rep $rep tasks $t $("$py" benchmarks/speed.py --child epoch --payload "$payload" --data "$data" 2>/dev/null | tail -1)"
  done
done
