"""Rows of a radius report: the columns, the three file formats it reads, and their validation.

Formats: ours (``ROW_COLUMNS`` plus optional first-order ``radius_<norm>``, ``base_predict``, ``n_used`` ...),
Cohen et al.'s published logs (``COHEN_COLUMNS``; ``predict`` -1 means abstained) and Mohapatra et al.'s
higher-order logs (``radius_cohen``, ``radius_L1`` ...). Every frame is normalised by :func:`_normalise_frame`,
which refuses rows that are inconsistent (abstained rows with a radius, correct rows that abstained, ...).
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from certify.rundir import format_value

ROW_COLUMNS = ("idx", "label", "predict", "abstained", "p_lower", "radius", "correct", "time")
COHEN_COLUMNS = ("idx", "label", "predict", "radius", "correct", "time")
_HOC_REQUIRED = ("idx", "label", "predict", "radius_cohen", "correct", "time")
_HOC_MAP = {"radius_cohen": "radius", "radius_L2": "radius_l2", "radius_L1": "radius_l1",
            "radius_LInf": "radius_linf", "radiusR": "hoc_radiusR", "radiusG": "hoc_radiusG",
            "radiusB": "hoc_radiusB"}
_FIRST_ORDER_RE = re.compile(r"^radius_(l2|l1|linf|channel_\d+)$")


def parse_time(value: Any) -> float:
    """Seconds from a float, an int or a ``H:MM:SS[.ffffff]`` string (the HOC logs' format)."""
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    text = str(value).strip()
    if ":" in text:
        parts = text.split(":")
        if len(parts) != 3:
            raise ValueError(f"time must be seconds or H:MM:SS, got {value!r}")
        h, m, s = parts
        return int(h) * 3600.0 + int(m) * 60.0 + float(s)
    return float(text)


def tsv_header(columns: Sequence[str]) -> str:
    """The header line (with newline) of a rows file with these columns."""
    return "\t".join(columns) + "\n"


def format_tsv_row(row: Mapping[str, Any], columns: Sequence[str]) -> str:
    """One TSV line (with newline) in our format; floats exactly (``repr``), booleans as 0/1."""
    missing = [c for c in columns if c not in row]
    if missing:
        raise ValueError(f"row is missing columns {missing}")
    return "\t".join(format_value(row[c]) for c in columns) + "\n"


def _detect_format(header: list[str], path: Path) -> str:
    cols = set(header)
    if set(ROW_COLUMNS) <= cols:
        return "certify"
    if set(_HOC_REQUIRED) <= cols:
        return "hoc"
    if list(header) == list(COHEN_COLUMNS):
        return "cohen"
    raise ValueError(f"{path}: unrecognised rows header {header}; expected our columns {list(ROW_COLUMNS)}, "
                     f"Cohen et al.'s {list(COHEN_COLUMNS)} or Mohapatra et al.'s (with radius_cohen)")


def _int_column(series: pd.Series, name: str, path: Path) -> pd.Series:
    try:
        values = pd.to_numeric(series).astype(float)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: column {name!r} must be integers ({exc})") from None
    if values.isna().any() or (values != values.round()).any():
        raise ValueError(f"{path}: column {name!r} must be integers")
    return values.astype(np.int64)


def _from_cohen(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    predict = _int_column(frame["predict"], "predict", path)
    abstained = predict == -1
    return pd.DataFrame({
        "idx": _int_column(frame["idx"], "idx", path),
        "label": _int_column(frame["label"], "label", path),
        "predict": pd.Series(predict, dtype="Int64").mask(abstained, pd.NA),
        "abstained": abstained,
        "p_lower": np.nan,
        "radius": pd.to_numeric(frame["radius"]).astype(float),
        "correct": _int_column(frame["correct"], "correct", path),
        "time": frame["time"].map(parse_time),
    })


def _from_hoc(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    out = _from_cohen(frame.assign(radius=frame["radius_cohen"]), path)
    for src, dst in _HOC_MAP.items():
        if src in frame.columns and src != "radius_cohen":
            out[dst] = pd.to_numeric(frame[src]).astype(float)
    if "count" in frame.columns:
        out["count"] = pd.to_numeric(frame["count"]).astype(float)
    return out


def _optional_int_column(series: pd.Series, name: str) -> Any:
    """Integers or NA (``None``, ``pd.NA``, NaN, "NA", "") as a pandas Int64 array."""
    values = pd.to_numeric(series.map(lambda t: None if (t is None or t is pd.NA or t in ("NA", "")) else t),
                           errors="coerce")
    raw_missing = series.map(lambda t: t is None or t is pd.NA or t in ("NA", "") or
                             (isinstance(t, float) and math.isnan(t)))
    if (values.isna() & ~raw_missing).any() or (values.dropna() != values.dropna().round()).any():
        raise ValueError(f"column {name!r} must hold integers or NA")
    return pd.array(values.to_numpy(dtype=float), dtype="Float64").astype("Int64")


def _raw_column(series: pd.Series, name: str) -> np.ndarray:
    return series.to_numpy()


# optional columns with a fixed type (read from any rows file that has them)
_EXTRA_COLUMN_TYPES = {"base_predict": _optional_int_column}


def _as_frame(rows: Any) -> pd.DataFrame:
    if isinstance(rows, pd.DataFrame):
        frame = rows.copy()
    elif isinstance(rows, (list, tuple)):
        if rows and not all(isinstance(r, Mapping) for r in rows):
            raise TypeError("rows must be a DataFrame or a list of dicts")
        frame = pd.DataFrame(list(rows), columns=list(rows[0].keys()) if rows else list(ROW_COLUMNS))
    else:
        raise TypeError(f"rows must be a DataFrame or a list of dicts, got {type(rows).__name__}")
    missing = [c for c in ROW_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"rows are missing columns {missing} (required: {list(ROW_COLUMNS)})")
    return frame.reset_index(drop=True)


def _as_int(series: pd.Series, name: str) -> np.ndarray:
    v = pd.to_numeric(series, errors="coerce").to_numpy(dtype=float)
    if len(v) and (np.isnan(v).any() or (v != np.round(v)).any()):
        raise ValueError(f"column {name!r} must hold integers")
    return v.astype(np.int64)


def _as_bool(series: pd.Series, name: str) -> np.ndarray:
    if series.dtype == bool:
        return series.to_numpy()
    num = pd.to_numeric(series.map(lambda t: {"True": 1, "False": 0}.get(t, t) if isinstance(t, str) else t),
                        errors="coerce").to_numpy(dtype=float)
    if len(num) and not np.isin(num, (0.0, 1.0)).all():
        raise ValueError(f"column {name!r} must hold booleans (0/1)")
    return num.astype(bool)


def _as_float(series: pd.Series, name: str) -> np.ndarray:
    try:
        return np.array([np.nan if (v is None or v is pd.NA or v == "NA") else float(v) for v in series],
                        dtype=float)
    except (ValueError, TypeError):
        raise ValueError(f"column {name!r} must hold numbers") from None


def _column_parser(col: str):
    if _FIRST_ORDER_RE.match(col) or col in ("count",) or col.startswith("hoc_"):
        return _as_float
    return _EXTRA_COLUMN_TYPES.get(col, _raw_column)


def _check_rows(out: pd.DataFrame) -> None:
    """Refuse rows that contradict each other (radii of abstentions, correct abstentions, duplicates ...)."""
    abstained = out["abstained"].to_numpy()
    for col in ["radius"] + [c for c in out.columns if _FIRST_ORDER_RE.match(c)]:
        v = out[col].to_numpy(dtype=float)
        if not np.all(np.isfinite(v)) or np.any(v < 0):
            bad = int(np.flatnonzero(~np.isfinite(v) | (v < 0))[0])
            raise ValueError(f"column {col!r} must hold finite radii >= 0 (row idx={out['idx'].iloc[bad]}: {v[bad]})")
        if np.any(v[abstained] != 0):
            raise ValueError(f"abstained rows must have {col} == 0")
    if np.any(out["correct"].to_numpy() & abstained):
        raise ValueError("a row cannot be both correct and abstained")
    known = out["predict"].notna().to_numpy()
    mism = known & ~abstained & (
        out["correct"].to_numpy() != (out["predict"].fillna(-1).to_numpy(dtype=np.int64) == out["label"].to_numpy()))
    if np.any(mism):
        bad = int(np.flatnonzero(mism)[0])
        raise ValueError(f"row idx={out['idx'].iloc[bad]}: 'correct' disagrees with predict == label")
    if out["idx"].duplicated().any():
        dup = out["idx"][out["idx"].duplicated()].iloc[0]
        raise ValueError(f"duplicate idx {dup} in rows")


def _normalise_frame(rows: Any) -> pd.DataFrame:
    """Rows (a DataFrame or dicts) as a typed frame with the required columns first; inconsistent rows refused."""
    frame = _as_frame(rows)
    out = pd.DataFrame({"idx": _as_int(frame["idx"], "idx"), "label": _as_int(frame["label"], "label")})
    pred = pd.to_numeric(frame["predict"].map(lambda t: None if t is pd.NA else t), errors="coerce")
    if (pred.dropna() != pred.dropna().round()).any():
        raise ValueError("column 'predict' must hold integers or NA")
    out["predict"] = pd.array(pred.to_numpy(dtype=float), dtype="Float64").astype("Int64")
    out["abstained"] = _as_bool(frame["abstained"], "abstained")
    out["p_lower"] = _as_float(frame["p_lower"], "p_lower")
    out["radius"] = _as_float(frame["radius"], "radius")
    out["correct"] = _as_bool(frame["correct"], "correct")
    out["time"] = frame["time"].map(parse_time).to_numpy(dtype=float) if len(frame) else np.array([], dtype=float)
    for col in frame.columns:
        if col not in out.columns:
            out[col] = _column_parser(col)(frame[col], col)
    _check_rows(out)
    return out
