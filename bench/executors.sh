#!/usr/bin/env bash
# The README's demo search run twice on this machine: --executor inline, then --executor ray with one
# worker (--cpus_per_job = every CPU, so one job at a time, as inline). Each run gets its own fresh logs
# folder (no shared pre-training cache between them). Prints both wall times, the ray/inline ratio, whether
# the outputs are byte-identical (--deterministic), and the plan with the jobs' measured times.
# Run by hand from the repository root inside the virtual environment:
#   bash bench/executors.sh [extra main.py flags]
set -euo pipefail
out=$(mktemp -d /tmp/medfusion-executors.XXXXXX)
cpus=$(python -c "import os; print(os.cpu_count())")
declare -A wall
for ex in inline ray; do
  extra=()
  [ "$ex" = ray ] && extra=(--executor ray --cpus_per_job "$cpus")
  start=$(date +%s.%N)
  python main.py --mode search --config configs/demo.yaml --cv_folds 3 --run_name demo --deterministic \
    --set runtime.logs_dir="$out/$ex" "${extra[@]}" "$@" > "$out/$ex.log" 2>&1
  wall[$ex]=$(python -c "import time; print(round(time.time() - $start, 1))")
  echo "$ex: ${wall[$ex]} s wall (log: $out/$ex.log)"
done
python - "$out" "${wall[inline]}" "${wall[ray]}" <<'PY'
import sys
from pathlib import Path
out, inline, ray = Path(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
a, b = out / "inline" / "demo", out / "ray" / "demo"
files = ["results.csv", "summary.csv", *sorted(str(p.relative_to(a)) for p in (a / "predictions").rglob("*.csv"))]
same = [f for f in files if (a / f).read_bytes() == (b / f).read_bytes()]
print(f"ray / inline wall time: {ray / inline:.3f} (overhead {100 * (ray / inline - 1):+.1f}%)")
print(f"byte-identical outputs: {len(same)} of {len(files)}")
PY
python main.py --mode plan --config configs/demo.yaml --cv_folds 3 --run_name demo --set runtime.logs_dir="$out/ray"
