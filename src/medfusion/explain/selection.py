"""Which validation samples to explain: per true class, the most telling ones, chosen deterministically.

For each true class the picks cycle through three kinds until N are chosen: the most confident
correct prediction, the most confident wrong one, the least confident one (confidence = the
probability of the predicted class). Ties break by sample id, so a rerun picks the same samples.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

KINDS = ("most confident correct", "most confident wrong", "least confident")


def select_samples(sample_ids, y_true, predicted, proba, n_per_class: int, n_classes: int = 3) -> pd.DataFrame:
    """Rows (position, sample_id, true, predicted, confidence, kind), grouped by true class, at most N per class."""
    if n_per_class < 1:
        raise ValueError(f"--samples must be >= 1, got {n_per_class}")
    proba = np.asarray(proba, np.float64)
    predicted = np.asarray(predicted, int)
    table = pd.DataFrame({"position": np.arange(len(proba)), "sample_id": np.asarray(sample_ids, str),
                          "true": np.asarray(y_true, int), "predicted": predicted,
                          "confidence": proba[np.arange(len(proba)), predicted]})
    rows = []
    for c in range(n_classes):
        mine = table[table["true"] == c]
        correct = mine["true"] == mine["predicted"]
        by_conf = mine.sort_values(["confidence", "sample_id"], ascending=[False, True], kind="stable")
        queues = {KINDS[0]: list(by_conf[correct.loc[by_conf.index]].index),
                  KINDS[1]: list(by_conf[~correct.loc[by_conf.index]].index),
                  KINDS[2]: list(mine.sort_values(["confidence", "sample_id"], kind="stable").index)}
        taken: list = []
        while len(taken) < min(n_per_class, len(mine)):
            for kind in KINDS:
                q = queues[kind]
                while q and q[0] in {t for t, _ in taken}:
                    q.pop(0)
                if q and len(taken) < n_per_class:
                    taken.append((q.pop(0), kind))
        rows += [{**table.loc[i].to_dict(), "kind": kind} for i, kind in taken]
    return pd.DataFrame(rows, columns=[*table.columns, "kind"])
