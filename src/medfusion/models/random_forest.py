"""Metadata branch: a Random Forest whose class probabilities feed the fusion model.

Everything (encoding, imputation, the forest) is fit on a fold's training patients only.
Training rows get out-of-fold probabilities from an inner split grouped by patient: the
network must see, during training, probabilities as honest as the ones it will see on the
validation fold. An ungrouped inner split lets a patient's other visits leak the answer.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder

# Columns that are (or are derived from) the label; a forest trained on them is meaningless.
from medfusion.constants import FOREST_LEAKY_COLUMNS as LEAKY_COLUMNS  # the name tests import
from medfusion.constants import NUM_CLASSES


def check_no_leaky_columns(df: pd.DataFrame, where: str = "metadata") -> None:
    """Raise ValueError naming any label-derived column present in ``df``."""
    norm = {str(c).strip().lower(): c for c in df.columns}
    for leaky in LEAKY_COLUMNS:
        if leaky.lower() in norm:
            raise ValueError(
                f"{where} features contain the label-leaking column {norm[leaky.lower()]!r}; "
                f"drop {', '.join(repr(c) for c in LEAKY_COLUMNS)} from the forest's features"
            )


def _normalise_strings(x):
    """strip + lower-case every non-missing value so 'Hallux ' and 'hallux' are one category."""
    frame = pd.DataFrame(x).astype(object)
    out = frame.apply(lambda col: col.map(lambda v: v if _is_missing(v) else (str(v).strip().lower() or np.nan)))
    return out.to_numpy(dtype=object)


def _is_missing(v) -> bool:
    try:
        return v is None or bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def _column_kinds(df: pd.DataFrame) -> tuple[list, list]:
    numeric, categorical = [], []
    for c in df.columns:
        s = df[c]
        if pd.api.types.is_bool_dtype(s) or pd.api.types.is_numeric_dtype(s):
            numeric.append(c)
        else:
            categorical.append(c)
    return numeric, categorical


class MetadataForest:
    """Fit-on-train-only preprocessing + RandomForestClassifier with patient-grouped OOF probabilities."""

    def __init__(self, forest_cfg, seed: int):
        self.cfg = forest_cfg
        self.seed = int(seed)
        self.feature_names_: list[str] | None = None
        self.pipeline_: Pipeline | None = None

    def build_pipeline(self, train_df: pd.DataFrame) -> Pipeline:
        """Unfitted preprocessing + forest for ``train_df``'s columns (numeric vs string by dtype)."""
        numeric, categorical = _column_kinds(train_df)
        transformers = []
        if numeric:
            transformers.append(("num", SimpleImputer(strategy="median", add_indicator=True), numeric))
        if categorical:
            transformers.append(("cat", Pipeline([
                ("normalise", FunctionTransformer(_normalise_strings, feature_names_out="one-to-one")),
                ("impute", SimpleImputer(strategy="constant", fill_value="missing")),
                ("onehot", OneHotEncoder(handle_unknown="ignore")),
            ]), categorical))
        pre = ColumnTransformer(transformers, remainder="drop", sparse_threshold=0.0)
        forest = RandomForestClassifier(
            n_estimators=self.cfg.n_estimators,
            max_depth=self.cfg.max_depth,
            min_samples_leaf=self.cfg.min_samples_leaf,
            class_weight=self.cfg.class_weight,
            random_state=self.seed,
            # one job: with several, predict_proba sums the trees in thread-completion order and
            # the probabilities differ in the last bit between runs; the forest is small anyway
            n_jobs=1,
        )
        return Pipeline([("preprocess", pre), ("forest", forest)])

    @staticmethod
    def _proba3(pipe: Pipeline, df: pd.DataFrame) -> np.ndarray:
        """Probabilities with exactly NUM_CLASSES columns in class order, even if a class was absent."""
        p = pipe.predict_proba(df)
        out = np.zeros((len(df), NUM_CLASSES))
        out[:, pipe.classes_.astype(int)] = p
        return out

    def fit_predict(self, train_df, train_labels, train_patients, val_df):
        """Return ``(train_oof_proba (n_train, 3), val_proba (n_val, 3))``."""
        check_no_leaky_columns(train_df, "training")
        check_no_leaky_columns(val_df, "validation")
        if list(val_df.columns) != list(train_df.columns):
            raise ValueError(
                f"validation metadata columns {list(val_df.columns)} differ from training columns {list(train_df.columns)}"
            )
        y = np.asarray(train_labels).astype(int).ravel()
        groups = np.asarray(train_patients).ravel()
        if not (len(y) == len(groups) == len(train_df)):
            raise ValueError(
                f"train_df ({len(train_df)} rows), train_labels ({len(y)}) and train_patients ({len(groups)}) "
                "must have the same length"
            )
        if y.size and (y.min() < 0 or y.max() >= NUM_CLASSES):
            raise ValueError(f"labels must be in [0, {NUM_CLASSES - 1}], got {sorted(set(y.tolist()))}")
        n_patients = len(np.unique(groups))
        if n_patients < 2:
            raise ValueError("out-of-fold forest probabilities need at least 2 training patients")
        train_df = train_df.reset_index(drop=True)
        val_df = val_df.reset_index(drop=True)

        oof = np.full((len(train_df), NUM_CLASSES), np.nan)
        splitter = StratifiedGroupKFold(n_splits=min(self.cfg.inner_folds, n_patients), shuffle=True,
                                        random_state=self.seed)
        for fit_idx, pred_idx in splitter.split(train_df, y, groups):
            shared = set(groups[fit_idx]) & set(groups[pred_idx])
            if shared:
                raise RuntimeError(f"inner forest split put patient(s) {sorted(shared)[:5]} on both sides")
            pipe = self.build_pipeline(train_df).fit(train_df.iloc[fit_idx], y[fit_idx])
            oof[pred_idx] = self._proba3(pipe, train_df.iloc[pred_idx])
        if np.isnan(oof).any():
            raise RuntimeError("inner forest split left some training rows without an out-of-fold prediction")

        self.pipeline_ = self.build_pipeline(train_df).fit(train_df, y)
        self.feature_names_ = [str(n) for n in self.pipeline_.named_steps["preprocess"].get_feature_names_out()]
        val_proba = self._proba3(self.pipeline_, val_df) if len(val_df) else np.zeros((0, NUM_CLASSES))
        return oof, val_proba
