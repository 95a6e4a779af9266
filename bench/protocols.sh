#!/usr/bin/env bash
# The demo search under both protocols on the same folds: search.selection inner (default) and
# outer (the reference study's: the reported fold picks epochs, Stage 2 and the fusion weight).
# Run by hand from the repository root inside the virtual environment:
#   bash bench/protocols.sh [extra main.py flags]
set -euo pipefail
/usr/bin/time -v python main.py --mode search --config configs/demo.yaml --cv_folds 3 \
  --run_name bench-inner --resume_mode fresh "$@" 2> >(tee /tmp/medfusion-inner.err >&2)
grep -E "Elapsed \(wall clock\)|Maximum resident" /tmp/medfusion-inner.err || true
python main.py --mode search --config configs/demo.yaml --cv_folds 3 --selection outer \
  --folds logs/bench-inner/folds.json --run_name bench-outer --resume_mode fresh "$@"
python bench/check_demo.py logs/bench-inner || true
python bench/compare_protocols.py logs/bench-inner logs/bench-outer
# the first release's map rule on the same folds (issue [signal]: physical units vs frame min-max)
python main.py --mode search --config configs/demo.yaml --cv_folds 3 --folds logs/bench-inner/folds.json \
  --set data.maps.depth_map.rule=minmax_frame --set data.maps.thermal_map.rule=minmax_frame \
  --run_name bench-minmax --resume_mode fresh "$@"
python bench/check_demo.py logs/bench-minmax || true
