"""medfusion entry point: python main.py --mode search --config configs/demo.yaml --cv_folds 3"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
if "--deterministic" in sys.argv:
    # oneDNN kernels may reorder float reductions between processes; they must be off before TF loads
    os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"  # forced: --deterministic promises oneDNN off
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "src"))

from medfusion.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
