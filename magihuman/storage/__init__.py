"""Weight storage: one registry of formats (:mod:`.registry`) and the layers that own a stored weight
(:mod:`.layers`). A leaf of the engine: it knows tensors and the kernels of :mod:`magihuman.quant`, no files."""

from .layers import BlockLinear, CompactEmbedding, Fetched, Patch, Segments, WeightSpec, compact_layers, weight_table
from .registry import (FILE, FP8, GGUF, KEEP_FILE, PLAIN, STORAGES, Storage, StorageLike, convert_choices,
                       load_choices, parse_storage, requested_storage, storage_of_dtype, storage_of_ggml)

__all__ = ["BlockLinear", "CompactEmbedding", "Fetched", "Patch", "Segments", "WeightSpec", "compact_layers", "weight_table", "FILE", "FP8", "GGUF",
           "KEEP_FILE", "PLAIN", "STORAGES", "Storage", "StorageLike", "convert_choices", "load_choices",
           "parse_storage", "requested_storage", "storage_of_dtype", "storage_of_ggml"]
