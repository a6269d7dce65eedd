"""Declared key maps: how the tensor names inside a file become a model's state-dict keys.

A map is data, not code: wrapper prefixes stripped when every name carries one, a model subtree found by
an anchor key or a prefix, per-name prefix renames, the prefixes of the keys to keep (the rest is set
aside and counted), and the prefix of a bare sub-module dict. Each loader declares its map next to the
model it loads, and the result says what was done (for the load log and error messages).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Optional

__all__ = ["KeyMap", "MappedKeys"]


@dataclass(frozen=True)
class MappedKeys:
    names: dict[str, str]            # model key -> name in the file
    ignored: list[str]               # file names outside the model (other sub-models, decoder halves, ...)
    prefix: str = ""                 # the wrapper / subtree prefix that was stripped
    notes: list[str] = field(default_factory=list)
    duplicates: list[tuple[str, str, str]] = field(default_factory=list)  # (key, first name, second name)


@dataclass(frozen=True)
class KeyMap:
    """File names -> model keys, applied in this order:

    1. ``anchor``: the model's root is wherever this key sits (``first_stage_model.decoder.conv1.weight``
       -> prefix ``first_stage_model.``); the shortest such prefix is stripped and names outside it ignored.
       ``subtree``: the same with known prefixes (the first one any name carries).
    2. ``wrappers``: one wrapper prefix stripped when every remaining name carries it (``passthrough``
       names, e.g. format markers, are exempt and kept as they are).
    3. ``rename``: per-name prefix renames (first match wins), e.g. ``model.encoder.`` -> ``encoder.``.
    4. ``keep``: only keys with one of these prefixes belong to the model; the rest is ignored.
    5. ``bare_prefix``: when nothing was kept, the file is a bare sub-module dict: every key gets this prefix.
    """

    anchor: Optional[str] = None
    subtree: tuple[str, ...] = ()
    wrappers: tuple[str, ...] = ()
    passthrough: tuple[str, ...] = ()
    rename: tuple[tuple[str, str], ...] = ()
    keep: tuple[str, ...] = ()
    bare_prefix: Optional[str] = None

    def apply(self, names: Iterable[str]) -> MappedKeys:
        names = list(names)
        prefix, notes = "", []
        pool = [n for n in names if n not in self.passthrough]
        ignored: list[str] = []
        if self.anchor is not None:
            roots = sorted((n[: -len(self.anchor)] for n in pool if n.endswith(self.anchor)
                            and (n == self.anchor or n[: -len(self.anchor)].endswith("."))), key=len)
            if roots:
                prefix = roots[0]
        for p in self.subtree:
            if not prefix and any(n.startswith(p) for n in pool):
                prefix = p
        if prefix:
            ignored = [n for n in pool if not n.startswith(prefix)]
            pool = [n for n in pool if n.startswith(prefix)]
            notes.append(f"model subtree {prefix!r}" + (f" ({len(ignored)} other tensors ignored)" if ignored else ""))
        elif self.wrappers and pool:
            for p in self.wrappers:
                if all(n.startswith(p) for n in pool):
                    prefix = p
                    notes.append(f"wrapper prefix {p!r} stripped")
                    break
        mapped = {n[len(prefix):]: n for n in pool}
        duplicates = []
        if self.rename:
            renamed: dict[str, str] = {}
            for key, name in mapped.items():
                for old, new in self.rename:
                    if key.startswith(old):
                        key = new + key[len(old):]
                        break
                if key in renamed:
                    duplicates.append((key, renamed[key], name))
                renamed[key] = name
            mapped = renamed
        if self.keep:
            kept = {k: n for k, n in mapped.items() if k.startswith(self.keep)}
            if kept or self.bare_prefix is None:
                ignored += [n for k, n in mapped.items() if k not in kept]
                mapped = kept
            else:
                mapped = {self.bare_prefix + k: n for k, n in mapped.items()}
                notes.append(f"bare sub-module: keys prefixed with {self.bare_prefix!r}")
        mapped.update({n: n for n in names if n in self.passthrough})
        return MappedKeys(mapped, ignored, prefix, notes, duplicates)
