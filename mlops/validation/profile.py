"""A data version's profile: sample count, label distribution, intensity statistics and histogram.

Kept in every validation report (so git history holds one per committed version) and read by the
drift bounds of the next version and by the steward's audit.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from mlops.validation.columns import declared

HIST_BINS = 20


def _number(value: Any) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def profile(manifest: pd.DataFrame) -> dict[str, Any]:
    """Summary of ``manifest`` through the columns its task declared (empty parts when none are)."""
    cols = declared(manifest)
    out: dict[str, Any] = {"n_samples": int(len(manifest))}
    if cols is None:
        return out
    if cols.group and cols.group in manifest:
        out["n_groups"] = int(manifest[cols.group].nunique())
    if cols.label and cols.label in manifest:
        counts = manifest[cols.label].astype(str).value_counts().sort_index()
        out["labels"] = {str(k): int(v) for k, v in counts.items()}
    elif cols.label_fractions:
        present = [c for c in cols.label_fractions if c in manifest]
        out["label_shares"] = {c: _number(pd.to_numeric(manifest[c], errors="coerce").mean()) for c in present}
    if cols.intensity and cols.intensity in manifest:
        values = pd.to_numeric(manifest[cols.intensity], errors="coerce").dropna().to_numpy(dtype=float)
        out["intensity"] = intensity_stats(cols.intensity, values)
    return out


def intensity_stats(column: str, values: np.ndarray) -> dict[str, Any]:
    if not len(values):
        return {"column": column, "n": 0}
    counts, edges = np.histogram(values, bins=HIST_BINS)
    q = np.quantile(values, [0.05, 0.5, 0.95])
    return {
        "column": column,
        "n": int(len(values)),
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "max": float(values.max()),
        "p05": float(q[0]),
        "median": float(q[1]),
        "p95": float(q[2]),
        "hist_counts": counts.tolist(),
        "hist_edges": edges.tolist(),
    }


def label_distribution(prof: dict[str, Any]) -> dict[str, float]:
    """Label shares of a profile (value counts normalised, or the mean per-sample shares)."""
    if prof.get("labels"):
        total = sum(prof["labels"].values()) or 1
        return {k: v / total for k, v in prof["labels"].items()}
    return {k: v for k, v in (prof.get("label_shares") or {}).items() if v is not None}
