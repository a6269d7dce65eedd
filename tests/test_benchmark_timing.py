"""Benchmarks read clocks only after the GPU finished its queued work (CUDA kernels run asynchronously: a
clock read right after a call times its launch). Proven without a GPU: the CUDA queries are patched and the
synchronisations and clock reads recorded in order."""

import re
import sys
import types
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import _timing  # noqa: E402


@pytest.fixture
def events(monkeypatch):
    """'sync' for each CUDA synchronize, 'clock' for each clock read of the timing helper."""
    log = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: log.append("sync"))
    clock = iter(range(10 ** 6))
    monkeypatch.setattr(_timing, "time", types.SimpleNamespace(perf_counter=lambda: log.append("clock") or
                                                               float(next(clock))))
    return log


def test_every_benchmark_reads_time_through_the_helper():
    """No benchmark (nor the child scripts some of them run) reads a clock of its own."""
    offenders = {}
    for path in sorted(BENCH.glob("*.py")):
        if path.name == "_timing.py":
            continue
        text = path.read_text()
        found = re.findall(r"perf_counter|time\.time\(\)|monotonic\(\)", text)
        if found:
            offenders[path.name] = len(found)
        if "now()" in text:
            assert "from _timing import now" in text, path.name
    assert offenders == {}


def test_clock_is_read_after_the_device_finished(events):
    assert _timing.now() == 0.0 and events == ["sync", "clock"]


def test_cpu_run_does_not_touch_cuda(monkeypatch, events):
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    _timing.now()
    assert events == ["clock"]


def test_dit_forward_benchmark_synchronizes_before_every_clock_read(events):
    import bench_dit_forward as B

    from magihuman.models.dit import DiTConfig, MagiHumanDiT

    model = MagiHumanDiT(DiTConfig.preset("tiny"), dtype=torch.float32, compute_dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    inputs = (torch.randn(1, 48, 2, 4, 4, generator=g), torch.randn(1, 5, 64, generator=g),
              torch.randn(1, 4, 64, generator=g), [4])
    first, best = B.time_forward(model, inputs, repeats=2)
    assert first == 1.0 and best == 1.0  # fake clock: one tick between the reads around each call
    assert events == ["sync", "clock"] * 6
    B.best_gemm_gflops(8, 8, 8, torch.float32, repeats=2)
    assert events == ["sync", "clock"] * 10
