"""A group of DiT worker processes driven by one host process (what the ComfyUI Multi-GPU nodes use).

Rank 0 is the host (the ComfyUI process): it runs the sampler and its own copy of the DiT (loaded by the host; in
ComfyUI through ComfyUI's model management). Ranks 1..N-1 are worker processes, ``python -m
magihuman.parallel.workers``: fresh interpreters that import only this engine (not the host's ``__main__``, which
``multiprocessing``'s spawn would re-run), one per device, each loading its copy of the DiT from the same file with
the same options once and keeping it across prompts. Commands and replies go over one authenticated connection
per worker; tensors go through ``torch.distributed`` (broadcast from rank 0). Every DiT call runs
sequence-parallel (:mod:`magihuman.parallel.sequence`) on all ranks at once; every rank gets the whole velocity.

Failures never hang the host: before each command the host checks that every worker is alive; a worker whose
command fails reports its traceback over its connection and exits at once (a rank waiting for it in a collective
then fails immediately, its peer gone); a dead or silent worker is noticed by the collectives (process-group
timeout) and by the replies (same timeout). On any failure the host stops the group (kills the workers by pid,
destroys the process group) and raises :class:`WorkerGroupError` naming the worker and the cause; the next call
starts a new group. One group exists per host process (a process has one default process group); it serves every
DiT of the same rank count (base and SR), each worker keeping the DiTs it was asked for (one on its GPU at a time).
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Client, Listener
from pathlib import Path
from typing import Any, NoReturn, Optional, Sequence

import torch
import torch.distributed as dist
import torch.nn as nn

from ..checkpoints import load_dit
from ..lora import apply_lora, remove_lora
from ..attention import ENGINE_BACKENDS
from ..device import COMPUTE_DTYPE_NAMES
from ..options import RunOptions
from ..quant.fp8 import fp8_mm_supported
from ..storage import FILE
from .launch import collective_backend, tcp_store
from .sequence import SequenceParallel, check_world_size, enable_sequence_parallel, sequence_parallel

log = logging.getLogger("magihuman.parallel")

__all__ = ["DiTSpec", "WorkerGroup", "WorkerGroupError", "ParallelDiT", "parallel_dit", "worker_devices",
           "current_group", "shutdown", "FAULT_ENV"]

ENGINE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding the ``magihuman`` package
FAULT_ENV = "MAGIHUMAN_TEST_WORKER_FAULT"  # tests only: a JSON file {"rank", "action": raise|kill|hang}, used once


class WorkerGroupError(RuntimeError):
    """A worker failed, died or did not answer; the group has been stopped (the next call starts a new one)."""


def _is_collective_error(exc: BaseException) -> bool:
    """An error raised by torch.distributed itself (a peer gone, a timeout), not by the computation."""
    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(w in text for w in ("gloo", "nccl", "timed out", "connection",
                                                                    "peer"))


# ---------------------------------------------------------------------------------------------------------------
# What a worker loads
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DiTSpec:
    """How a worker builds its copy of a DiT: the host copy's file, the storage it was loaded in and its run options
    (read from the loaded model, so whatever loaded it, the workers match it), plus the LoRA files applied on top."""

    path: str
    storage: str  # Storage.spec of the load (e.g. "file", "fp8", "Q4_K")
    options: RunOptions
    loras: tuple[tuple[str, float], ...] = ()

    @classmethod
    def of(cls, model, path: str, loras: Sequence[tuple[str, float]] = ()) -> "DiTSpec":
        options = RunOptions.of(model)
        if options.attention not in ENGINE_BACKENDS:
            log.warning("MagiHuman Multi-GPU: the workers run attention %r as 'sdpa' (host-only kernel)",
                        options.attention)
            options = replace(options, attention="sdpa")
        storage = getattr(model, "load_info", {}).get("storage", FILE.spec)
        return cls(path=str(path), storage=storage, options=replace(options, blocks_on_device=None, loras=()),
                   loras=tuple((str(p), float(s)) for p, s in loras))

    @property
    def key(self) -> str:
        """The model a worker keeps (LoRAs are applied and removed on it, not part of the key)."""
        return json.dumps({"path": self.path, "storage": self.storage, "options": self.options.to_dict()},
                          sort_keys=True)

    def to_payload(self) -> dict:
        return {"path": self.path, "storage": self.storage, "options": self.options.to_dict(),
                "loras": [list(x) for x in self.loras]}

    @classmethod
    def from_payload(cls, d: dict) -> "DiTSpec":
        return cls(path=d["path"], storage=d["storage"], options=RunOptions.from_dict(d["options"]),
                   loras=tuple((str(p), float(s)) for p, s in d.get("loras", ())))

    def build(self, device: torch.device, compute_device: Optional[torch.device] = None):
        """The worker's copy, loaded on ``device``; it computes on ``compute_device`` (default ``device``). A worker
        keeping another DiT on its GPU builds this one on the CPU: its fp8 support is still that of the GPU."""
        model = load_dit(self.path, storage=self.storage, device=device, show_progress=False)
        self.options.apply(model, compute_device if compute_device is not None else device)
        return model


def _set_loras(model, loras: Sequence[tuple[str, float]]) -> None:
    remove_lora(model)
    for path, strength in loras:
        apply_lora(model, path, strength)


# ---------------------------------------------------------------------------------------------------------------
# Host side
# ---------------------------------------------------------------------------------------------------------------

def _loopback_interface() -> Optional[str]:
    """The loopback interface's name ("lo" on Linux, "lo0" on macOS), or None."""
    try:
        names = {name for _, name in socket.if_nameindex()}
    except (OSError, AttributeError):
        return None
    return next((n for n in ("lo", "lo0") if n in names), None)


@contextlib.contextmanager
def _environ(**values: Optional[str]):
    """Environment variables set for the block only (None: left as they are)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update({k: v for k, v in values.items() if v is not None})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def worker_devices(host_device: torch.device | str, world_size: int) -> list[torch.device]:
    """Devices of ranks 0..N-1: the host's, then the other CUDA devices in order (or the CPU for every rank when
    the host computes on the CPU)."""
    host = torch.device(host_device)
    if host.type != "cuda":
        return [torch.device("cpu")] * world_size
    index = torch.cuda.current_device() if host.index is None else host.index
    others = [i for i in range(torch.cuda.device_count()) if i != index]
    if len(others) < world_size - 1:
        raise ValueError(f"{world_size} GPUs requested but this machine has {torch.cuda.device_count()} CUDA "
                         "device(s)")
    return [torch.device("cuda", index)] + [torch.device("cuda", i) for i in others[:world_size - 1]]


def host_nccl_env(backend: str) -> dict:
    """Environment of the host's (rank 0's) NCCL group. A timed-out collective must not have NCCL's watchdog
    tear down the host process (e.g. the ComfyUI server): error handling 2 aborts the communicators only, and
    the next collective raises. No TORCH_NCCL_BLOCKING_WAIT: it makes the host thread wait for every
    collective to finish (a host stall per all-to-all, 2 per layer), where NCCL otherwise only orders the
    compute stream after it; a dead or silent worker is still caught by the replies' timeout."""
    return dict(TORCH_NCCL_ASYNC_ERROR_HANDLING="2") if backend == "nccl" else {}


@dataclass
class _Worker:
    rank: int
    device: torch.device
    proc: subprocess.Popen
    conn: Any = None
    models: dict = field(default_factory=dict)  # DiTSpec.key -> the LoRAs applied on the worker

    def describe(self) -> str:
        return f"worker {self.rank} (pid {self.proc.pid}, {self.device})"

    def exit_reason(self) -> Optional[str]:
        code = self.proc.poll()
        if code is None:
            return None
        if code < 0:
            try:
                return f"died (killed by signal {signal.Signals(-code).name})"
            except ValueError:
                return f"died (signal {-code})"
        return f"exited with code {code}"


class WorkerGroup:
    """Rank 0 (this process) plus N-1 worker processes in one default process group (see the module docstring)."""

    def __init__(self, devices: Sequence[torch.device], timeout: float, *, threads: Optional[int] = None):
        if dist.is_initialized():
            raise RuntimeError("torch.distributed is already initialised in this process; the Multi-GPU worker group "
                               "needs its own process group (is this process itself running under torchrun?)")
        self.devices = [torch.device(d) for d in devices]
        self.world_size = len(self.devices)
        self.timeout = float(timeout)
        self.backend = collective_backend(self.devices[0])
        self.closed = False
        self.workers: list[_Worker] = []
        self._sp: dict[tuple[int, int], SequenceParallel] = {}
        self.forwards = 0
        threads = threads or max(1, torch.get_num_threads() // self.world_size)
        authkey = secrets.token_bytes(32)
        # every rank is on this machine: gloo talks over the loopback interface only (it reads the variable when the
        # group is created; NCCL moves tensors over NVLink/PCIe and is left to its own interface choice)
        gloo_if = (os.environ.get("GLOO_SOCKET_IFNAME") or _loopback_interface()) if self.backend == "gloo" else None
        t0 = time.monotonic()
        store = tcp_store("127.0.0.1", 0, self.world_size, is_master=True, wait_for_workers=False,
                          timeout=datetime.timedelta(seconds=self.timeout))
        listener = Listener(("127.0.0.1", 0), authkey=authkey)
        try:
            paths = [str(ENGINE_ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
            env = dict(os.environ, MAGIHUMAN_WORKER_AUTHKEY=authkey.hex(), PYTHONPATH=os.pathsep.join(paths))
            if gloo_if:
                env["GLOO_SOCKET_IFNAME"] = gloo_if
            for rank in range(1, self.world_size):
                args = dict(rank=rank, world_size=self.world_size, device=str(self.devices[rank]),
                            backend=self.backend, address=list(listener.address), store_port=store.port,
                            timeout=self.timeout, threads=threads)
                proc = subprocess.Popen([sys.executable, "-m", "magihuman.parallel.workers", json.dumps(args)],
                                        env=env, cwd=str(ENGINE_ROOT))
                self.workers.append(_Worker(rank, self.devices[rank], proc))
            self._accept(listener)
        except BaseException:
            listener.close()
            self._kill()
            raise
        listener.close()
        self._store = store
        try:
            if self.backend == "nccl":
                torch.cuda.set_device(self.devices[0])
            with _environ(GLOO_SOCKET_IFNAME=gloo_if, **host_nccl_env(self.backend)):
                dist.init_process_group(self.backend, store=store, rank=0, world_size=self.world_size,
                                        timeout=datetime.timedelta(seconds=self.timeout))
            self._replies("start")
        except BaseException as e:
            self._fail(e, "start")
        log.info("MagiHuman Multi-GPU: %d ranks (%s on %s) ready in %.1f s", self.world_size, self.backend,
                 ", ".join(map(str, self.devices)), time.monotonic() - t0)

    # ------------------------------------------------------------ plumbing

    def _accept(self, listener: Listener) -> None:
        """Each worker connects first thing after it starts; bounded by the timeout and by the workers' lives."""
        conns: list = []

        def accept():
            try:
                for _ in self.workers:
                    conns.append(listener.accept())
            except OSError:
                pass

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        deadline = time.monotonic() + self.timeout
        while thread.is_alive():
            thread.join(0.05)
            dead = [w for w in self.workers if w.proc.poll() is not None]
            if dead or time.monotonic() > deadline:
                listener.close()
                cause = f"{dead[0].describe()} {dead[0].exit_reason()}" if dead else \
                    f"the workers did not connect within {self.timeout:g} s"
                raise WorkerGroupError(f"MagiHuman Multi-GPU: could not start the workers: {cause}")
        for conn in conns:
            kind, rank = conn.recv()[:2]
            self.workers[rank - 1].conn = conn

    def _check_alive(self, what: str) -> None:
        for w in self.workers:
            reason = w.exit_reason()
            if reason:
                self._fail(None, what, worker=w, cause=reason)

    def _replies(self, what: str, timeout: Optional[float] = None) -> list:
        """One reply per worker; a worker error, death or silence past the timeout fails the group."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        out = {}
        while len(out) < len(self.workers):
            for w in self.workers:
                if w.rank in out:
                    continue
                if w.conn.poll(0.02):
                    kind, payload = w.conn.recv()
                    if kind == "error":
                        self._fail(None, what, worker=w, cause=f"failed: {payload}")
                    out[w.rank] = payload
                elif w.proc.poll() is not None:
                    self._fail(None, what, worker=w, cause=w.exit_reason())
            if len(out) < len(self.workers) and time.monotonic() > deadline:
                late = next(w for w in self.workers if w.rank not in out)
                self._fail(None, what, worker=late, cause=f"did not answer within {self.timeout:g} s")
        return [out[w.rank] for w in self.workers]

    def _send(self, what: str, message: tuple) -> None:
        self._check_alive(what)
        for w in self.workers:
            try:
                w.conn.send(message)
            except (OSError, EOFError) as e:
                self._fail(e, what, worker=w, cause=w.exit_reason() or f"connection lost ({e})")

    def _diagnose(self, wait: float = 2.0) -> tuple[Optional[_Worker], Optional[str]]:
        """After a failed collective: the worker that reported an error (a report is sent before the worker exits)
        or died; (None, None) when none did within ``wait`` seconds."""
        deadline = time.monotonic() + wait
        while True:
            for w in self.workers:
                try:
                    if w.conn is not None and w.conn.poll(0):
                        kind, payload = w.conn.recv()
                        if kind == "error":
                            return w, f"failed: {payload}"
                except (OSError, EOFError):
                    pass
            dead = [w for w in self.workers if w.proc.poll() is not None]
            if dead:
                return dead[0], dead[0].exit_reason()
            if time.monotonic() > deadline:
                return None, None
            time.sleep(0.02)

    def _fail(self, exc: Optional[BaseException], what: str, worker: Optional[_Worker] = None,
              cause: Optional[str] = None) -> NoReturn:
        """Stop the group (workers may be waiting in a collective) and raise a WorkerGroupError naming the worker and
        the cause. An exception of the host's own (an interrupt, a bad input) that no worker caused is re-raised
        as it is."""
        if worker is None and exc is not None and not isinstance(exc, WorkerGroupError):
            if not _is_collective_error(exc):  # the host's own failure (a bad input, out of memory, an interrupt)
                self.close()
                raise exc
            worker, cause = self._diagnose()
            if worker is None:
                cause = (f"failed in a collective on rank 0, no worker reported an error (a worker may be stuck past "
                         f"the {self.timeout:g} s timeout): {type(exc).__name__}: {str(exc).strip()[:400]}")
        self.close()
        who = worker.describe() if worker is not None else f"the {self.world_size}-rank group"
        head, _, details = str(cause).partition("\n")
        raise WorkerGroupError(f"MagiHuman Multi-GPU: {who} {head} (during {what}); the group was stopped, the next "
                               "run starts a new one" + (f"\n{details}" if details else "")) from exc

    def _kill(self) -> None:
        for w in self.workers:
            if w.proc.poll() is None:
                w.proc.kill()
        for w in self.workers:
            try:
                w.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                log.warning("MagiHuman Multi-GPU: %s did not exit after SIGKILL", w.describe())
            if w.conn is not None:
                w.conn.close()

    def close(self) -> None:
        """Stop the workers (asked to exit, killed after a second) and destroy the process group."""
        if self.closed:
            return
        self.closed = True
        for w in self.workers:
            try:
                if w.proc.poll() is None and w.conn is not None:
                    w.conn.send(("exit", None))
            except (OSError, EOFError):
                pass
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and any(w.proc.poll() is None for w in self.workers):
            time.sleep(0.02)
        self._kill()
        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception as e:  # noqa: BLE001 - a broken group is being thrown away anyway
                log.debug("MagiHuman Multi-GPU: destroy_process_group: %s", e)
        global _GROUP
        if _GROUP is self:
            _GROUP = None

    # ------------------------------------------------------------ commands

    def set_timeout(self, timeout: float) -> bool:
        """Use another timeout from now on (False when the process group cannot change it: restart the group)."""
        set_pg_timeout = getattr(dist.distributed_c10d, "_set_pg_timeout", None)
        if set_pg_timeout is None:
            return False
        set_pg_timeout(datetime.timedelta(seconds=float(timeout)))
        self.timeout = float(timeout)
        return True

    def ensure(self, spec: DiTSpec) -> None:
        """Every worker holds ``spec``'s DiT (loaded once, kept) with ``spec``'s LoRAs applied."""
        if all(w.models.get(spec.key) == spec.loras for w in self.workers):
            return
        self._send("loading the DiT", ("load", spec.to_payload()))
        self._replies("loading the DiT")
        for w in self.workers:
            w.models[spec.key] = spec.loras

    def sequence_parallel_for(self, model) -> SequenceParallel:
        heads = (model.config.num_heads_q, model.config.num_heads_kv)
        if heads not in self._sp:
            self._sp[heads] = SequenceParallel(*heads)
        return self._sp[heads]

    @torch.no_grad()
    def forward(self, model, spec: DiTSpec, video: torch.Tensor, audio: torch.Tensor, text: torch.Tensor,
                lens: Sequence[int], coords: str = "v2", frame_receptive_field: int = 11):
        """One sequence-parallel DiT call on every rank; ``model`` is rank 0's copy (the host's)."""
        if self.closed:
            raise WorkerGroupError("MagiHuman Multi-GPU: this worker group was stopped")
        check_world_size(model.config.num_heads_q, model.config.num_heads_kv, self.world_size)
        self.ensure(spec)
        lens = [int(n) for n in (lens.tolist() if isinstance(lens, torch.Tensor) else lens)]
        comm = self.devices[0] if self.backend == "nccl" else torch.device("cpu")
        tensors = [t.to(comm).contiguous() for t in (video, audio, text)]
        meta = dict(key=spec.key, shapes=[list(t.shape) for t in tensors],
                    dtypes=[str(t.dtype).removeprefix("torch.") for t in tensors], lens=lens, coords=coords,
                    frame_receptive_field=int(frame_receptive_field))
        self._send("a DiT step", ("forward", meta))
        try:
            for t in tensors:
                dist.broadcast(t, src=0)
            sp = self.sequence_parallel_for(model)
            with sequence_parallel(model, sp):
                out = model(video, audio, text, lens, coords=coords, frame_receptive_field=frame_receptive_field)
        except BaseException as e:
            self._fail(e, "a DiT step")
        self._replies("a DiT step")
        self.forwards += 1
        return out


_GROUP: Optional[WorkerGroup] = None


def current_group() -> Optional[WorkerGroup]:
    return _GROUP


def shutdown() -> None:
    """Stop the group of this process, if any (also at exit)."""
    if _GROUP is not None:
        _GROUP.close()


atexit.register(shutdown)


def get_group(devices: Sequence[torch.device], timeout: float, *, threads: Optional[int] = None) -> WorkerGroup:
    """The running group when it has these devices (its timeout set to ``timeout``), else a new one (the old one
    is stopped): a DiT and an SR DiT on the same GPUs share the workers."""
    global _GROUP
    devices = [torch.device(d) for d in devices]
    if _GROUP is not None and not _GROUP.closed and _GROUP.devices == devices and _GROUP.timeout != float(timeout):
        if not _GROUP.set_timeout(timeout):
            _GROUP.close()
    if _GROUP is not None and (_GROUP.closed or _GROUP.devices != devices):
        _GROUP.close()
        _GROUP = None
    if _GROUP is None:
        _GROUP = WorkerGroup(devices, timeout, threads=threads)
    return _GROUP


class ParallelDiT(nn.Module):
    """Rank 0's DiT driving the worker group: called like the DiT (what the pipeline stages call), it runs every
    forward sequence-parallel over the group."""

    def __init__(self, model, spec: DiTSpec, devices: Sequence[torch.device], timeout: float,
                 threads: Optional[int] = None):
        super().__init__()
        self.model = model
        self.spec, self.devices, self.timeout, self.threads = spec, list(devices), float(timeout), threads
        self.variant = getattr(model, "variant", None)
        self.lora_variant = getattr(model, "lora_variant", None)  # what rank 0's LoRAs make it (pipeline checks)
        self.config = model.config

    @property
    def world_size(self) -> int:
        return len(self.devices)

    def forward(self, video_latent, audio_latent, text_embeds, text_lens, *, coords: str = "v2",
                frame_receptive_field: int = 11):
        group = get_group(self.devices, self.timeout, threads=self.threads)
        return group.forward(self.model, self.spec, video_latent, audio_latent, text_embeds, text_lens,
                             coords=coords, frame_receptive_field=frame_receptive_field)


def parallel_dit(model, path: str, world_size: int, *, timeout: float = 600.0, host_device=None,
                 loras: Sequence[tuple[str, float]] = (), threads: Optional[int] = None) -> ParallelDiT:
    """``model`` (loaded from ``path``) run over ``world_size`` ranks: this process and ``world_size - 1`` workers
    started on first use. Refuses rank counts the DiT's heads cannot split."""
    check_world_size(model.config.num_heads_q, model.config.num_heads_kv, world_size)
    if model.local_attention_mode != "window":
        raise ValueError("the Multi-GPU group runs the default 'window' attention plan; this DiT is set to "
                         f"{model.local_attention_mode!r}")
    host = host_device if host_device is not None else (model.compute_device or
                                                         model.adapter.video_embedder.weight.device)
    spec = DiTSpec.of(model, path, loras)
    devices = worker_devices(host, world_size)
    mode = spec.options.fp8_compute
    if mode != "off":  # every rank computes like the host: each GPU needs fp8 matmuls of its own
        compute = COMPUTE_DTYPE_NAMES[spec.options.compute_dtype]
        lacking = [str(d) for d in devices if not fp8_mm_supported(d, mode, compute)]
        if lacking:
            raise ValueError(f"fp8 compute {mode!r} runs on every GPU of the group, but "
                             f"{', '.join(lacking)} has no fp8 matmuls (CUDA Ada/Hopper or newer); load the DiT with "
                             "fp8_compute 'off' for this group")
    return ParallelDiT(model, spec, devices, timeout, threads)


# ---------------------------------------------------------------------------------------------------------------
# Worker side
# ---------------------------------------------------------------------------------------------------------------

def _fault(rank: int, when: str) -> None:
    """Tests only (:data:`FAULT_ENV`): raise, die or hang here once."""
    path = os.environ.get(FAULT_ENV)
    if not path or not os.path.exists(path):
        return
    try:
        fault = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return
    if int(fault.get("rank", 1)) != rank or fault.get("at", "forward") != when:
        return
    os.unlink(path)
    action = fault.get("action", "raise")
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if action == "hang":
        time.sleep(3600)
    raise RuntimeError(f"injected fault in worker {rank} ({when})")


def _worker_forward(models: dict, active: list, device: torch.device, rank: int, meta: dict) -> None:
    model = models[meta["key"]]
    if active and active[0] != meta["key"] and device.type == "cuda":  # one DiT on the GPU at a time
        models[active[0]].to("cpu")
        model.to(device)
    active[:] = [meta["key"]]
    comm = device if dist.get_backend() == "nccl" else torch.device("cpu")
    tensors = [torch.empty(s, dtype=getattr(torch, d), device=comm)
               for s, d in zip(meta["shapes"], meta["dtypes"])]
    for t in tensors:
        dist.broadcast(t, src=0)
    _fault(rank, "forward")
    video, audio, text = (t.to(device) for t in tensors)
    with torch.no_grad():
        model(video, audio, text, meta["lens"], coords=meta["coords"],
              frame_receptive_field=meta["frame_receptive_field"])


def worker_main(args: dict) -> None:
    rank, device = int(args["rank"]), torch.device(args["device"])
    conn = Client(tuple(args["address"]), authkey=bytes.fromhex(os.environ.pop("MAGIHUMAN_WORKER_AUTHKEY")))
    conn.send(("hello", rank, os.getpid()))
    torch.set_num_threads(int(args.get("threads") or 1))
    timeout = datetime.timedelta(seconds=float(args["timeout"]))
    models: dict = {}
    active: list = []
    try:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        store = tcp_store("127.0.0.1", int(args["store_port"]), int(args["world_size"]), is_master=False,
                          timeout=timeout)
        dist.init_process_group(args["backend"], store=store, rank=rank, world_size=int(args["world_size"]),
                                timeout=timeout)
        conn.send(("ok", None))
        while True:
            kind, payload = conn.recv()  # blocks: the host decides when; EOF when the host is gone
            if kind == "exit":
                break
            if kind == "load":
                spec = DiTSpec.from_payload(payload)
                if spec.key not in models:
                    build = device if not active or device.type != "cuda" else torch.device("cpu")
                    models[spec.key] = spec.build(build, compute_device=device)
                    # numerics are the host's (the spec): no agreement round, the host is not in this call
                    enable_sequence_parallel(models[spec.key], agree=False)
                _set_loras(models[spec.key], spec.loras)
                conn.send(("ok", models[spec.key].variant))
            elif kind == "forward":
                _worker_forward(models, active, device, rank, payload)
                conn.send(("ok", None))
    except (EOFError, ConnectionError):
        os._exit(0)  # the host is gone: nothing to report to
    except BaseException:  # noqa: BLE001 - reported to the host, then a hard exit so no collective waits for us
        text = traceback.format_exc()
        lines = text.strip().splitlines()
        try:  # the exception line first, then the end of the traceback
            conn.send(("error", lines[-1] + "\n--- worker traceback (end) ---\n" + "\n".join(lines[-12:-1])))
        except (OSError, EOFError):
            pass
        sys.stderr.write(f"MagiHuman worker {rank}: {text}")
        sys.stderr.flush()
        os._exit(1)
    if dist.is_initialized():
        dist.destroy_process_group()
    os._exit(0)


if __name__ == "__main__":  # python -m magihuman.parallel.workers '<json args>' (started by WorkerGroup)
    worker_main(json.loads(sys.argv[1]))
