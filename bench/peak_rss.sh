#!/usr/bin/env bash
# Peak RSS of a search at the real data's size: 630 synthetic patients (3,025 samples; the real study has
# ~3,100), 224 px, four image modalities and metadata, two folds, one epoch per stage, tiny backbone (the
# crops, not the backbone, are what grows with the sample count). The dataset is generated once into
# $MEDFUSION_RSS_DATA (default /tmp/medfusion-rss/data, ~100 MB, ~2 min); each run gets a fresh logs folder.
# Run by hand from the repository root inside the virtual environment:
#   bash bench/peak_rss.sh [extra main.py flags, e.g. --executor ray]
set -euo pipefail
data=${MEDFUSION_RSS_DATA:-/tmp/medfusion-rss/data}
if [ ! -f "$data/demo.json" ]; then
  python -c "import sys; sys.path.insert(0, 'src'); from medfusion.data.synthetic import generate_demo; \
generate_demo('$data', seed=7, n_patients=630)"
fi
logs=$(mktemp -d /tmp/medfusion-rss-logs.XXXXXX)
/usr/bin/time -v python main.py --mode search --config configs/demo.yaml --data_dir "$data" --set data.demo=false \
  --set data.image_size=224 --cv_folds 2 --combinations metadata+depth_rgb+depth_map+thermal_rgb+thermal_map \
  --set train.pretrain.epochs=1 --set train.stage1.epochs=1 --set train.stage2.epochs=1 \
  --set runtime.logs_dir="$logs" --run_name rss --set search.bootstrap_resamples=200 "$@" > "$logs/search.log" 2>&1
grep -E "DFU manifest|Elapsed|Maximum resident|Exit status" "$logs/search.log"
python - "$logs/search.log" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))
n = int(re.search(r"DFU manifest: (\d+) samples", text).group(1))
crops = n * 224 * 224 * 3 * 4
print(f"peak RSS {kb / 1e6:.2f} GB; the crops held once: {crops / 1e9:.2f} GB ({n} x 224 x 224 x 3 B x 4 modalities)")
PY
echo "log: $logs/search.log"
