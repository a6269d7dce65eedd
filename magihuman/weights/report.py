"""The one key-mismatch report of the engine: which file, which keys are missing, unexpected, or of the wrong
shape. Every loader words its refusal this way, so a user sees the same kind of message for every model."""

from __future__ import annotations

from typing import Iterable, Mapping, Optional, Sequence

from ..errors import CheckpointError

__all__ = ["listing", "mismatch_report", "check_keys"]

Shapes = Mapping[str, Sequence[int]]


def listing(keys: Sequence[str], shapes: Optional[Shapes] = None, limit: int = 5) -> str:
    """``a [2, 3], b [4], ... (+N more)``: the first ``limit`` keys, with their shapes when given."""
    keys = list(keys)
    items = [f"{k} {list(shapes[k])}" if shapes is not None else k for k in keys[:limit]]
    more = f", ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(items) + more


def mismatch_report(where: str, found: Shapes, expected: Shapes, what: str,
                    allow_missing: Iterable[str] = ()) -> Optional[str]:
    """A readable report of missing / unexpected / wrong-shape keys of ``found`` against ``expected``,
    or None when they match. ``where`` names the file(s), ``what`` the model expected there."""
    allow = set(allow_missing)
    missing = [k for k in expected if k not in found and k not in allow]
    unexpected = [k for k in found if k not in expected]
    wrong = [k for k in expected if k in found and tuple(found[k]) != tuple(expected[k])]
    if not (missing or unexpected or wrong):
        return None
    lines = [f"{where} does not hold {what}:"]
    if missing:
        lines.append(f"  {len(missing)} missing key(s): {listing(missing, expected)}")
    if unexpected:
        lines.append(f"  {len(unexpected)} unexpected key(s): {listing(unexpected, found)}")
    if wrong:
        lines.append(f"  {len(wrong)} key(s) with the wrong shape: " + ", ".join(
            f"{k} is {list(found[k])}, expected {list(expected[k])}" for k in wrong[:5])
            + (f", ... (+{len(wrong) - 5} more)" if len(wrong) > 5 else ""))
    return "\n".join(lines)


def check_keys(where: str, found: Shapes, expected: Shapes, what: str, *, allow_missing: Iterable[str] = (),
               hint: str = "") -> None:
    """Raise :class:`CheckpointError` with :func:`mismatch_report` (plus ``hint``) when the keys or shapes differ."""
    msg = mismatch_report(where, found, expected, what, allow_missing)
    if msg:
        raise CheckpointError(msg + (f"\n  {hint}" if hint else ""))
