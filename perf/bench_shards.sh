#!/usr/bin/env bash
# One `rfbench eval` on the CPU: 1 process (2 threads, and 1 thread) against 2 shard processes of 1 thread each
# under torchrun, timed with `time`; checks that the merged result equals the single-process one.
#
#   bash perf/bench_shards.sh            # N_PER_CLASS=50 ROUNDS=2 by default; OUT=dir keeps the files
#
# Prints /proc/loadavg before every run: on a shared machine the ratios are only as good as the load is steady.
set -euo pipefail
PY=${PYTHON:-python}
OUT=${OUT:-$(mktemp -d)}
N=${N_PER_CLASS:-50}
ROUNDS=${ROUNDS:-2}
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "
import torch; from rfbench.models import create_model
torch.manual_seed(0); torch.save(create_model('smallcnn', 10, 1, (0.286,), (0.353,)).state_dict(), '$OUT/w.pt')"
ARGS=(eval --model smallcnn --weights "$OUT/w.pt" --dataset fashion-mnist --n-per-class "$N" --batch-size 50
      --device cpu --attack pgd:steps=10 --channels-last off --quiet)
for r in $(seq "$ROUNDS"); do
  echo "== round $r: load $(cut -d' ' -f1-3 /proc/loadavg)"
  rm -rf "$OUT/one2"; echo "1 process, 2 threads"
  time OMP_NUM_THREADS=2 "$PY" -m rfbench "${ARGS[@]}" --out "$OUT/one2" > /dev/null
  echo "load $(cut -d' ' -f1-3 /proc/loadavg)"; rm -rf "$OUT/one1"; echo "1 process, 1 thread"
  time OMP_NUM_THREADS=1 "$PY" -m rfbench "${ARGS[@]}" --out "$OUT/one1" > /dev/null
  echo "load $(cut -d' ' -f1-3 /proc/loadavg)"; rm -rf "$OUT/two"; echo "torchrun: 2 processes, 1 thread each"
  time OMP_NUM_THREADS=1 "$PY" -m torch.distributed.run --standalone --nproc-per-node 2 -m rfbench "${ARGS[@]}" \
    --out "$OUT/two" > /dev/null 2>&1
  "$PY" -c "
import json, numpy as np, sys
a, b = (json.load(open(f'$OUT/{d}/result.json')) for d in ('one1', 'two'))
fa, fb = (np.load(f'$OUT/{d}/flags.npz') for d in ('one1', 'two'))
same = all(np.array_equal(fa[k], fb[k], equal_nan=True) for k in ('clean_pred', 'adv_pred', 'ran', 'pert'))
same &= all(a[k] == b[k] for k in ('per_class', 'summary', 'confusion'))
print('merged result equals 1 process (1 thread):', same); sys.exit(0 if same else 1)"
done
