"""Per combination: mean QWK under the inner and the outer protocol on the same folds, and visit vs view QWK.

    python bench/compare_protocols.py logs/<inner run> logs/<outer run>

Prints a Markdown table for docs/benchmarks.md. "optimism" = outer - inner: what letting the
reported fold make the choices added to the score.
"""

import json
import sys
from pathlib import Path

import pandas as pd

inner, outer = Path(sys.argv[1]), Path(sys.argv[2])
if json.loads((inner / "folds.json").read_text()) != json.loads((outer / "folds.json").read_text()):
    sys.exit("the two runs do not share their folds: run the outer one with --folds <inner>/folds.json")
a = pd.read_csv(inner / "summary.csv").set_index("combination")
b = pd.read_csv(outer / "summary.csv").set_index("combination")
print("| combination | view QWK inner | view QWK outer | optimism (view) | visit QWK inner [95% CI] "
      "| visit QWK outer | optimism (visit) |")
print("| --- | ---: | ---: | ---: | --- | ---: | ---: |")
for c in a.index:
    r, o = a.loc[c], b.loc[c]
    print(f"| {c} | {r.qwk_mean:.4f} | {o.qwk_mean:.4f} | {o.qwk_mean - r.qwk_mean:+.4f} | {r.visit_qwk_mean:.4f} "
          f"[{r.visit_qwk_ci_low:.3f}, {r.visit_qwk_ci_high:.3f}] | {o.visit_qwk_mean:.4f} "
          f"| {o.visit_qwk_mean - r.visit_qwk_mean:+.4f} |")
d = (b["qwk_mean"] - a["qwk_mean"]).reindex(a.index)
print(f"\nmean optimism over combinations: view {d.mean():+.4f}; "
      f"visit {(b['visit_qwk_mean'] - a['visit_qwk_mean']).reindex(a.index).mean():+.4f}")
for name, run in (("inner", inner), ("outer", outer)):
    comp = run / "comparisons.csv"
    if comp.is_file():
        print(f"\n{name}: fusion vs best member (pooled visit QWK, paired patient bootstrap)")
        for r in pd.read_csv(comp).itertuples():
            print(f"  {r.combination} vs {r.best_member}: {r.delta_visit_qwk:+.4f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}]"
                  f", better in {r.folds_won} of {r.n_folds} folds")
