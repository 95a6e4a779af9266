"""Patient-level bootstrap: intervals for pooled out-of-fold visit QWK, and paired differences.

Patients, not visits, are resampled: a patient's visits are correlated, so resampling
visits would make the intervals too narrow. Paired comparisons reuse the same resample
for both combinations, on the same visits.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from medfusion.constants import NUM_CLASSES
from medfusion.evaluation.kappa import qwk_from_confusion

N_RESAMPLES = 2000


def _patient_confusions(visits: pd.DataFrame, patients: np.ndarray) -> np.ndarray:
    """(n_patients, K*K) confusion counts per patient, in the order of `patients`."""
    pos = {p: i for i, p in enumerate(patients)}
    out = np.zeros((len(patients), NUM_CLASSES * NUM_CLASSES))
    idx = visits["patient"].map(pos).to_numpy()
    cell = visits["y_true"].to_numpy(int) * NUM_CLASSES + visits["y_pred"].to_numpy(int)
    np.add.at(out, (idx, cell), 1.0)
    return out


def _resample_counts(n_patients: int, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_patients, np.full(n_patients, 1.0 / n_patients), size=n).astype(np.float64)


def _qwk_of(counts: np.ndarray) -> np.ndarray:
    return qwk_from_confusion(counts.reshape(*counts.shape[:-1], NUM_CLASSES, NUM_CLASSES))


def bootstrap_qwk(visits: pd.DataFrame, n: int = N_RESAMPLES, seed: int = 0, level: float = 0.95) -> dict:
    """Pooled QWK of visit rows (patient, y_true, y_pred) with a percentile interval over patient resamples."""
    patients = np.array(sorted(visits["patient"].unique()))
    per = _patient_confusions(visits, patients)
    point = float(_qwk_of(per.sum(axis=0)))
    draws = _qwk_of(_resample_counts(len(patients), n, seed) @ per)
    lo, hi = np.quantile(draws, [(1 - level) / 2, 1 - (1 - level) / 2])
    return {"qwk": point, "ci_low": float(lo), "ci_high": float(hi), "n_patients": int(len(patients)),
            "n_visits": int(len(visits)), "resamples": int(n)}


def paired_bootstrap(a: pd.DataFrame, b: pd.DataFrame, n: int = N_RESAMPLES, seed: int = 0,
                     level: float = 0.95) -> dict:
    """QWK(a) - QWK(b) on the visits both scored, with a paired patient-bootstrap interval."""
    common = sorted(set(a["visit"]) & set(b["visit"]))
    if not common:
        raise ValueError("the two prediction sets share no visit; they cannot be compared")
    a, b = a.set_index("visit").loc[common].reset_index(), b.set_index("visit").loc[common].reset_index()
    patients = np.array(sorted(a["patient"].unique()))
    pa, pb = _patient_confusions(a, patients), _patient_confusions(b, patients)
    w = _resample_counts(len(patients), n, seed)
    delta = _qwk_of(w @ pa) - _qwk_of(w @ pb)
    lo, hi = np.quantile(delta, [(1 - level) / 2, 1 - (1 - level) / 2])
    point = float(_qwk_of(pa.sum(axis=0)) - _qwk_of(pb.sum(axis=0)))
    return {"delta": point, "ci_low": float(lo), "ci_high": float(hi), "n_visits": len(common),
            "n_patients": int(len(patients))}
