"""Acceptance figures of a demo search: fusion gain over single modalities, share of the oracle's
QWK, and whether any image job restored Stage 1 weights from epoch 1.

    python bench/check_demo.py logs/<run>
"""

import sys
from pathlib import Path

import pandas as pd

run = Path(sys.argv[1] if len(sys.argv) > 1 else "logs/demo")
summary = pd.read_csv(run / "summary.csv").set_index("combination")
results = pd.read_csv(run / "results.csv")
oracle = pd.read_csv(run / "oracle_reference.csv").groupby("reference")["qwk"].mean()
trained = summary[[(":" not in c) for c in summary.index]]  # late_mean:/ensemble: rows are baselines
singles = trained[[("+" not in c) for c in trained.index]]
fusions = trained[[("+" in c) for c in trained.index]]
best_fusion, best_single = fusions["qwk_mean"].idxmax(), singles["qwk_mean"].idxmax()
gain = fusions.loc[best_fusion, "qwk_mean"] - singles.loc[best_single, "qwk_mean"]
share = fusions.loc[best_fusion, "qwk_mean"] / oracle["oracle:all"]
images = results[results["combination"] != "metadata"]
epoch1 = images[images["stage1_best_epoch"] == 1]
print(f"best fusion   {best_fusion}: QWK {fusions.loc[best_fusion, 'qwk_mean']:.4f}")
print(f"best single   {best_single}: QWK {singles.loc[best_single, 'qwk_mean']:.4f}")
print(f"fusion gain   {gain:+.4f}  (needs >= +0.05)")
print(f"oracle (all)  QWK {oracle['oracle:all']:.4f}; best fusion reaches {share:.3f} of it (needs >= 0.80)")
print(f"image jobs restoring Stage 1 from epoch 1: {len(epoch1)} of {len(images)} (needs 0)")
if "visit_qwk_mean" in summary.columns:
    r = summary.loc[best_fusion]
    print(f"best fusion per visit: QWK {r.visit_qwk_mean:.4f} [{r.visit_qwk_ci_low:.3f}, {r.visit_qwk_ci_high:.3f}]")
if (run / "comparisons.csv").is_file():
    comp = pd.read_csv(run / "comparisons.csv").set_index("combination")
    if best_fusion in comp.index:
        c = comp.loc[best_fusion]
        print(f"best fusion vs its best member {c.best_member}: visit QWK {c.delta_visit_qwk:+.4f} "
              f"[{c.ci_low:+.3f}, {c.ci_high:+.3f}], better in {c.folds_won} of {c.n_folds} folds")
ok = gain >= 0.05 and share >= 0.80 and epoch1.empty
print("PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
