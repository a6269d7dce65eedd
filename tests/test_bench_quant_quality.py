"""benchmarks/bench_quant_quality.py takes its formats from the storage registry, split by how a user makes each:
fp8 quantised while loading, GGUF converted to a file; the order (the output's) is the registry's."""

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench_quant_quality as bench  # noqa: E402
from magihuman.storage import FP8, GGUF, PLAIN, STORAGES, load_choices  # noqa: E402


def test_formats_split_by_kind_in_the_registry_order():
    assert bench.LOADED == ("fp8",)
    assert bench.CONVERTED and all(STORAGES[n].kind == GGUF for n in bench.CONVERTED)
    assert {STORAGES[n].kind for n in bench.LOADED} == {FP8}
    # every compact storage a loader keeps, each once, in load_choices() order (the printed order)
    compact = [n for n in load_choices() if n in STORAGES and STORAGES[n].kind != PLAIN]
    assert list(bench.FORMATS) == compact
