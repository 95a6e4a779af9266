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
python bench/check_demo.py logs/bench-inner
python bench/compare_protocols.py logs/bench-inner logs/bench-outer
