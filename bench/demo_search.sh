#!/usr/bin/env bash
# Times the README's demo search (3 folds, every combination of metadata, depth_rgb and
# thermal_map, tiny backbone, CPU) and checks the demo's acceptance figures.
# Run by hand from the repository root inside the virtual environment:
#   bash bench/demo_search.sh [extra main.py flags]
set -euo pipefail
run=bench-demo
/usr/bin/time -v python main.py --mode search --config configs/demo.yaml --cv_folds 3 \
  --run_name "$run" --resume_mode fresh "$@" 2> >(tee /tmp/medfusion-bench.err >&2)
grep -E "Elapsed \(wall clock\)|Maximum resident" /tmp/medfusion-bench.err || true
python bench/check_demo.py "logs/$run"
