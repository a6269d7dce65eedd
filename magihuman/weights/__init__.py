"""The one weights layer: every model's files are opened, mapped, checked and streamed in here.

- :mod:`.source`: a checkpoint (file, ``.zst``, index + shards, folder, torch pickle, GGUF) as model key ->
  tensor entries, headers only;
- :mod:`.keymap`: declared maps from file names to model keys (prefixes, subtrees, renames);
- :mod:`.layouts`: the DiT's third-party layouts (ComfyUI-native, Wan2GP, quanto int8), detected and mapped onto
  the official fused keys by entries derived from several file tensors (:mod:`.entry`);
- :mod:`.report`: the one key-mismatch report (file, missing, unexpected, wrong shapes);
- :mod:`.stream`: fill a meta-built model tensor by tensor in its final dtype and device;
- :mod:`.compact`: fill the layers that own a stored weight in a requested storage (kept as the file holds it, or
  encoded tensor by tensor);
- :mod:`.fp8`, :mod:`.torch_files`, :mod:`.safetensors_io`, :mod:`.gguf_file`: format details.

It imports no model: ``magihuman.models`` define networks, the loaders (``magihuman.checkpoints`` for the
DiT, ``magihuman.loaders`` for the rest) join the two.
"""

from .entry import Entry, Reader
from .keymap import KeyMap, MappedKeys
from .report import check_keys, listing, mismatch_report
from .source import INDEX_NAME, SINGLE_NAME, WeightSource, open_source
from .stream import check_materialized, expected_shapes, install, load_into, state_slots
from .torch_files import load_torch_weights

__all__ = ["Entry", "Reader", "KeyMap", "MappedKeys", "check_keys", "listing", "mismatch_report", "INDEX_NAME",
           "SINGLE_NAME", "WeightSource", "open_source", "check_materialized", "expected_shapes", "install",
           "load_into", "state_slots", "load_torch_weights"]
