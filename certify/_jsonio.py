"""JSON with one policy for every file the toolkit writes, and atomic writes.

Policy: non-finite floats (NaN, +-inf) become ``null`` so every file is strict JSON (RFC 8259) that any
reader accepts; numpy scalars/arrays and tensors become plain numbers/lists; paths become strings;
tuples become lists; anything else is written as its ``str``.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

__all__ = ["jsonable", "dumps", "digest", "atomic_write_text", "atomic_write_json"]


def jsonable(value: Any) -> Any:
    """``value`` as plain JSON types; non-finite floats become None.

    >>> jsonable({"a": float("nan"), "b": (1, 2.5)})
    {'a': None, 'b': [1, 2.5]}
    """
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, np.ndarray) or type(value).__name__ == "Tensor":
        return jsonable(value.tolist())
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, str):
        return value
    return str(value)


def dumps(obj: Any, *, indent: int | None = 2) -> str:
    """Strict JSON text of ``obj`` (keys sorted, NaN -> null)."""
    return json.dumps(jsonable(obj), indent=indent, sort_keys=True, allow_nan=False)


def digest(obj: Any) -> str:
    """First 16 hex digits of the SHA-256 of ``obj``'s canonical JSON (a stable cache key)."""
    import hashlib

    return hashlib.sha256(dumps(obj, indent=None).encode()).hexdigest()[:16]


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` via a temporary file, fsync and rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """:func:`atomic_write_text` of :func:`dumps` ``(obj)`` plus a final newline."""
    return atomic_write_text(path, dumps(obj) + "\n")
