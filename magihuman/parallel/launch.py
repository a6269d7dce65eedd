"""Process groups for sequence parallelism: torchrun for the command line, a local gloo group for tests/benchmarks.

- :func:`torchrun_context` reads what ``torchrun`` (``python -m torch.distributed.run``) sets (``WORLD_SIZE``,
  ``RANK``, ``LOCAL_RANK``) and initialises the default group: ``cuda:LOCAL_RANK`` when CUDA is there (NCCL, or
  gloo where torch has no NCCL, e.g. Windows: see :func:`collective_backend`), else gloo on the CPU.
- :func:`torchrun_command` is the command that re-launches ``python -m magihuman ...`` on N local processes.
- :func:`run_local` runs a function on N spawned CPU processes that form a gloo group and returns their results.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import pickle
import socket
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import logging

import torch
import torch.distributed as dist

__all__ = ["DistContext", "torchrun_world_size", "torchrun_context", "torchrun_command", "relaunch", "to_cpu",
           "broadcast_object", "lead_first", "run_local", "free_port", "collective_backend", "tcp_store"]

log = logging.getLogger("magihuman.parallel")

DEFAULT_TIMEOUT = datetime.timedelta(minutes=30)


@dataclass
class DistContext:
    """This process's place in the default process group."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def lead(self) -> bool:
        """Rank 0: encodes the prompt, decodes and writes."""
        return self.rank == 0

    def describe(self) -> str:
        return f"{self.world_size} ranks ({self.backend}, {self.device.type})"

    def barrier(self) -> None:
        if self.backend == "nccl":
            dist.barrier(device_ids=[self.device.index])
        else:
            dist.barrier()

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def collective_backend(device: torch.device) -> str:
    """The process-group backend for ranks computing on ``device``: NCCL for CUDA where this torch has it, gloo
    otherwise. Windows builds of torch ship without NCCL (``dist.is_nccl_available()`` is False): there gloo
    moves every exchange through host memory (works, slower)."""
    if torch.device(device).type != "cuda":
        return "gloo"
    if dist.is_nccl_available():
        return "nccl"
    log.warning("MagiHuman Multi-GPU: this torch has no NCCL (Windows builds do not ship it); the GPUs exchange "
                "through host memory with gloo, slower than NCCL")
    return "gloo"


def tcp_store(host: str, port: int, world_size: int, *, is_master: bool, timeout: datetime.timedelta,
              platform: str = sys.platform, **kwargs) -> "dist.TCPStore":
    """A ``TCPStore`` that also starts on Windows: its torch builds lack libuv, the default store backend since
    torch 2.4 ("use_libuv was requested but PyTorch was build without libuv support")."""
    if platform == "win32":
        kwargs["use_libuv"] = False
    return dist.TCPStore(host, port, world_size, is_master=is_master, timeout=timeout, **kwargs)


def torchrun_world_size() -> int:
    """``WORLD_SIZE`` as torchrun sets it (1 when not launched by torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def torchrun_context(timeout: datetime.timedelta = DEFAULT_TIMEOUT, *, cpu: bool = False) -> Optional[DistContext]:
    """Under torchrun with more than one process: initialise the default group (once) and say where this rank
    runs; None otherwise. The device is ``cuda:LOCAL_RANK`` when CUDA is available (NCCL, or gloo without it), else
    (or with ``cpu``) the CPU (gloo)."""
    world = torchrun_world_size()
    if world <= 1:
        return None
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
    if torch.cuda.is_available() and not cpu:
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"rank {rank}: LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA "
                               "device(s): launch at most one process per GPU")
        device = torch.device("cuda", local_rank)
        backend = collective_backend(device)
        torch.cuda.set_device(device)
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        kwargs = {"device_id": device} if backend == "nccl" else {}
        dist.init_process_group(backend, timeout=timeout, **kwargs)
    return DistContext(rank, world, local_rank, device, backend)


def torchrun_command(nproc: int, module_args: Sequence[str]) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc-per-node N -m <module_args>`` (one machine, a free
    rendezvous port)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={int(nproc)}",
            "-m", *module_args]


def to_cpu(obj: Any) -> Any:
    """``obj`` with every tensor moved to the CPU (tensors, dataclasses, dicts, lists, tuples; others as they are)."""
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: to_cpu(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                                           if f.init})
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def broadcast_object(obj: Any, ctx: Optional[DistContext]) -> Any:
    """Rank 0's ``obj`` on every rank, tensors on the CPU (pickled through the group); ``obj`` itself without a
    group."""
    if ctx is None:
        return obj
    box = [to_cpu(obj) if ctx.lead else None]
    dist.broadcast_object_list(box, src=0, device=ctx.device if ctx.backend == "nccl" else None)
    return box[0]


def lead_first(ctx: Optional[DistContext], fn: Callable[[], Any]) -> Any:
    """``fn()`` on rank 0 first, then on the other ranks (e.g. writing files they then read)."""
    if ctx is None:
        return fn()
    if ctx.lead:
        out = fn()
        ctx.barrier()
        return out
    ctx.barrier()
    return fn()


def relaunch(nproc: int, argv: Sequence[str], module: str = "magihuman") -> int:
    """``python -m <module> <argv>`` on ``nproc`` local processes under torch.distributed.run; its exit code."""
    import subprocess

    root = str(Path(__file__).resolve().parents[2])  # so the ranks import this engine, installed or not
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, *filter(None, os.environ.get("PYTHONPATH", "").split(
        os.pathsep))]))
    if sys.platform == "win32":  # torch on Windows has no libuv: torchrun's rendezvous store must not ask for it
        env.setdefault("USE_LIBUV", "0")
    return subprocess.run(torchrun_command(nproc, [module, *argv]), env=env).returncode


# ---------------------------------------------------------------------------------------------------------------
# A local gloo group (tests, benchmarks)
# ---------------------------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _local_rank_main(rank: int, world_size: int, port: int, timeout_s: float, threads: int, fn, args, results):
    torch.set_num_threads(threads)
    try:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=timeout_s))
        try:
            value = fn(*args)
        finally:
            dist.destroy_process_group()
        results.put((rank, True, pickle.dumps(value)))
    except BaseException:  # noqa: BLE001 - reported to the parent with its traceback
        results.put((rank, False, traceback.format_exc()))


def _local_context(fn):
    """A fork server that imported torch and ``fn``'s module once (each rank then starts in milliseconds instead
    of re-importing torch), or plain spawn where there is no fork server (Windows)."""
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "torch.distributed", __name__, getattr(fn, "__module__", __name__)])
    return ctx


def run_local(fn: Callable[..., Any], world_size: int, *args: Any, timeout: float = 120.0, threads: int = 1) -> list:
    """``fn(*args)`` on ``world_size`` spawned CPU processes forming a gloo default group; their return values (any
    picklable object, CPU tensors included) in rank order. ``fn`` must be importable by name (a module-level
    function). Raises RuntimeError with the first failing rank's traceback, or after ``timeout`` seconds."""
    ctx = _local_context(fn)
    results = ctx.SimpleQueue()
    port = free_port()
    procs = [ctx.Process(target=_local_rank_main, args=(r, world_size, port, timeout, threads, fn, args, results),
                         daemon=True) for r in range(world_size)]
    for p in procs:
        p.start()
    out: dict[int, Any] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(out) < world_size:
            if not results.empty():
                rank, ok, payload = results.get()
                if not ok:
                    raise RuntimeError(f"rank {rank} of {world_size} failed:\n{payload}")
                out[rank] = pickle.loads(payload)
                continue
            dead = [r for r, p in enumerate(procs) if p.exitcode not in (None, 0) and r not in out]
            if dead and results.empty():
                time.sleep(0.2)  # its report may still be on the way
                if results.empty():
                    raise RuntimeError(f"rank {dead[0]} of {world_size} exited with code {procs[dead[0]].exitcode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{world_size} local ranks did not finish within {timeout:g} s")
            time.sleep(0.01)
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join()
    return [out[r] for r in range(world_size)]
