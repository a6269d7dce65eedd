"""ComfyUI's runtime, bridged for the engine: model folders, devices, the operations namespace (ComfyUI's
offloading cast for the engine's stored-weight layers), ModelPatcher, model handles, progress and interrupt. The
one module besides :mod:`.v3` that imports ComfyUI; without ComfyUI it falls back to plain CPU behaviour so the
nodes run in tests and scripts.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, NamedTuple, Optional

import torch

from ..magihuman.attention import register_attention_backend
from ..magihuman.lora import LoraFile, apply_lora, remove_lora, variant_with_loras
from ..magihuman.storage import FILE, PLAIN, STORAGES, Storage, parse_storage, storage_of_dtype
from ..magihuman.storage import BlockLinear as _EngineBlockLinear
from ..magihuman.storage import CompactEmbedding as _EngineCompactEmbedding
from ..magihuman.storage import Fetched
from .v3 import HAS_COMFY

log = logging.getLogger("magihuman.nodes")

if HAS_COMFY:  # pragma: no cover - exercised only inside ComfyUI (see the harness run in the README)
    import comfy.latent_formats as _latent_formats
    import comfy.model_management as _mm
    import comfy.model_patcher as _model_patcher
    import comfy.ops as _comfy_ops
    import comfy.utils as _comfy_utils
    import folder_paths as _folder_paths
    import latent_preview as _latent_preview
    from comfy.ldm.modules.attention import optimized_attention as _optimized_attention
    from comfy.weight_adapter import LoRAAdapter as _LoRAAdapter

# --------------------------------------------------------------------------------------------
# Model folders
# --------------------------------------------------------------------------------------------
MODEL_EXTENSIONS = (".safetensors", ".sft", ".gguf", ".ckpt", ".pt", ".pth")  # DiT / text encoder (GGUF readers)
PLAIN_EXTENSIONS = tuple(e for e in MODEL_EXTENSIONS if e != ".gguf")         # VAEs and LoRAs: no GGUF reader
_models_dir_override: str | None = None


def set_models_dir(path: str | None) -> None:
    """Without ComfyUI: the ComfyUI-style ``models`` folder to read (else $MAGIHUMAN_MODELS_DIR)."""
    global _models_dir_override
    _models_dir_override = path


def folder_paths_for(kind: str) -> list[str]:
    if HAS_COMFY:
        try:
            return list(_folder_paths.get_folder_paths(kind))
        except KeyError:
            return []
    root = _models_dir_override or os.environ.get("MAGIHUMAN_MODELS_DIR")
    return [os.path.join(root, k) for k in (kind, *_LEGACY_FOLDERS.get(kind, ()))] if root else []


def input_directory() -> str | None:
    """ComfyUI's input folder (where Load Image / Load Audio list files); None without ComfyUI."""
    return _folder_paths.get_input_directory() if HAS_COMFY else None


# The older folders ComfyUI also reads for a kind (its folder_paths.py registers them in the same list): models/unet
# (where ComfyUI-GGUF users keep .gguf diffusion models) and models/clip. The stand-in reads them too.
_LEGACY_FOLDERS = {"diffusion_models": ("unet",), "text_encoders": ("clip",)}


def list_models(kinds: tuple[str, ...], *, folders: bool = True,
                extensions: tuple[str, ...] = MODEL_EXTENSIONS) -> list[str]:
    """Model entries under the given ComfyUI folder kinds (files ending in one of ``extensions``).

    Files with a model extension are listed by their relative path. A directory that holds a whole
    model (an official ``model.safetensors.index.json`` folder, an HF folder with ``config.json``,
    a Turbo VAE folder with its JSON + ckpt, a stable-audio folder with ``model_config.json``) is
    listed once as ``name/`` and the files inside it are not listed separately.
    """
    out: list[str] = []
    for kind in kinds:
        for root in folder_paths_for(kind):
            if not os.path.isdir(root):
                continue
            for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
                rel = os.path.relpath(dirpath, root)
                if rel != "." and folders and is_model_folder(dirpath):
                    out.append(rel.replace(os.sep, "/") + "/")
                    dirnames[:] = []
                    continue
                dirnames.sort()
                for fn in sorted(filenames):
                    if fn.lower().endswith(extensions):
                        p = fn if rel == "." else os.path.join(rel, fn)
                        out.append(p.replace(os.sep, "/"))
    return sorted(dict.fromkeys(out))


def is_model_folder(path: str) -> bool:
    names = set(os.listdir(path))
    if "model.safetensors.index.json" in names or "model_config.json" in names or "config.json" in names:
        return True
    has_json = any(n.endswith(".json") for n in names)
    has_ckpt = any(n.endswith((".ckpt", ".pth", ".pt")) for n in names)
    return has_json and has_ckpt


def resolve_model(kinds: tuple[str, ...], name: str) -> str:
    """Absolute path of a listed entry; refuses names that escape the model folders."""
    if not name:
        raise ValueError("no model selected: pick a file from the list (is the model folder empty?)")
    tried = []
    for kind in kinds:
        for root in folder_paths_for(kind):
            # Checked on the normalised name, not the resolved one: "../" and absolute names are refused,
            # while symlinks the user placed inside the model folder (a common setup) keep working.
            root_abs = os.path.abspath(root)
            cand = os.path.normpath(os.path.join(root_abs, name.rstrip("/")))
            if os.path.commonpath([root_abs, cand]) != root_abs:
                raise ValueError(f"model name {name!r} points outside the model folder {root_abs}; "
                                 "pick an entry from the list")
            tried.append(cand)
            if os.path.exists(cand):
                return cand
    where = ", ".join(tried) or "(no model folders configured)"
    raise FileNotFoundError(f"model {name!r} not found; looked in: {where}. Put the file in "
                            f"ComfyUI/models/{kinds[0]}/ and refresh the node list")


# --------------------------------------------------------------------------------------------
# Devices, dtypes, operations, model management
# --------------------------------------------------------------------------------------------
def devices(kind: str) -> tuple[torch.device, torch.device]:
    """(load_device, offload_device) for "diffusion" | "text_encoder" | "vae"."""
    if not HAS_COMFY:
        return torch.device("cpu"), torch.device("cpu")
    if kind == "diffusion":
        return _mm.get_torch_device(), _mm.unet_offload_device()
    if kind == "text_encoder":
        return _mm.text_encoder_device(), _mm.text_encoder_offload_device()
    return _mm.vae_device(), _mm.vae_offload_device()


def intermediate_device() -> torch.device:
    return _mm.intermediate_device() if HAS_COMFY else torch.device("cpu")


def auto_plain_dtype(device: torch.device) -> torch.dtype:
    """The plain dtype "auto" stands for on ``device``: bf16 where ComfyUI says it is supported (the official
    dtype), else fp16 on GPUs, fp32 on CPUs; bf16 without ComfyUI."""
    if HAS_COMFY:
        return torch.bfloat16 if _mm.should_use_bf16(device) else (
            torch.float16 if device.type != "cpu" else torch.float32)
    return torch.bfloat16


def pick_storage(choice: str, device: torch.device) -> Storage:
    """A loader's ``weight_dtype`` as a :class:`~magihuman.storage.Storage`: "auto" keeps what a file holds (GGUF
    blocks, fp8 + scale) and plainly held tensors in :func:`auto_plain_dtype`; any registry name as it is."""
    if choice == "auto":
        return FILE.keeping(storage_of_dtype(auto_plain_dtype(device)))
    return parse_storage(choice)


def pick_weight_dtype(choice: str, device: torch.device) -> torch.dtype:
    """A plain loader's ``weight_dtype`` (VAEs): "auto" -> :func:`auto_plain_dtype`, else the named plain dtype."""
    if choice == "auto":
        return auto_plain_dtype(device)
    st = parse_storage(choice)
    if st.kind != PLAIN:
        raise ValueError(f"weight dtype {choice!r}: this model is kept in a plain dtype (auto, "
                         f"{', '.join(s.name for s in STORAGES.values() if s.kind == PLAIN)})")
    return st.dtype


if HAS_COMFY:  # pragma: no cover - inside ComfyUI only

    class _RawWeight(NamedTuple):
        """What ComfyUI's cast is given for a compact weight: the stored bytes (and bias), no patch functions, so the
        cast moves bytes only and ComfyUI's LoRA patches are added after the engine decodes them."""

        weight: torch.Tensor
        bias: Optional[torch.Tensor]
        weight_function: tuple = ()
        bias_function: tuple = ()

    class _ComfyStoredWeight(_comfy_ops.CastWeightBiasOp):
        """A stored-weight layer fetched through ComfyUI's offloadable cast (``cast_bias_weight(..., offloadable=True)``
        with ``uncast_bias_weight`` after the last use), as core layers do, so ComfyUI's async weight streams, lowvram
        loading and LoRA patches apply to the engine's block linears too."""

        comfy_cast_weights = True

        def fetch(self, device, dtype):
            bias = getattr(self, "bias", None)
            if self.storage.kind == PLAIN:  # ComfyUI casts to the compute dtype and adds its lowvram patches
                weight, bias, stream = _comfy_ops.cast_bias_weight(self, dtype=dtype, device=device, bias_dtype=dtype,
                                                                   offloadable=True)
                return Fetched(weight, None, bias, (weight, bias, stream))
            raw = _RawWeight(self.weight, bias)
            data, bias, stream = _comfy_ops.cast_bias_weight(raw, dtype=self.weight.dtype, device=device,
                                                             bias_dtype=dtype or torch.float32, offloadable=True)
            scale = self.weight_scale
            if scale is not None and scale.device != device:
                scale = scale.to(device)
            return Fetched(data, scale, bias, (data, bias, stream))

        def release(self, token):
            if token is not None:
                weight, bias, stream = token
                _comfy_ops.uncast_bias_weight(self, weight, bias, stream)

        def host_patches(self):
            """ComfyUI's weight patches of a compact weight, added by the engine after decoding: the lowvram ones
            (``weight_function``) when ComfyUI manages the layer that way, else those MagiPatcher keeps instead of
            merging. Never both: a layer ComfyUI moves out later (``partially_unload``) gets ``weight_function`` for
            the same patches while ``magi_decoded_patches`` is still set. Plain weights: ComfyUI's cast adds them."""
            if self.storage.kind == PLAIN:
                return ()
            lowvram = list(getattr(self, "weight_function", ()))
            return lowvram if lowvram else list(getattr(self, "magi_decoded_patches", ()))

    def _eager(cls):
        """A comfy.ops layer that ComfyUI's dynamic VRAM mode builds with its weight (on the device it is given: the
        engine passes "meta" and streams the file in), not without one: that mode leaves ``weight`` None until its
        own state-dict loader runs, and trusts a subclass with a loader of its own to build eagerly."""

        class Eager(cls):
            def _load_from_state_dict(self, *args, **kwargs):
                return torch.nn.Module._load_from_state_dict(self, *args, **kwargs)

        Eager.__name__, Eager.__qualname__ = cls.__name__, f"MagiOps.{cls.__name__}"
        return Eager

    class MagiOps(_comfy_ops.manual_cast):
        """comfy.ops.manual_cast for the engine's models: its layers built eagerly (streamed into), the stored-weight
        layers fetched through ComfyUI's cast, and the weight hook of the engine's small norms."""

        Linear = _eager(_comfy_ops.manual_cast.Linear)
        Embedding = _eager(_comfy_ops.manual_cast.Embedding)

        class BlockLinear(_ComfyStoredWeight, _EngineBlockLinear):
            pass

        class CompactEmbedding(_ComfyStoredWeight, _EngineCompactEmbedding):
            pass

        @staticmethod
        def fetch_weight(module, dtype, device):
            """A plain layer's weight on ``device`` through ComfyUI's cast path (offload streams, lowvram, LoRA
            patches); the engine's own small norms are moved as they are."""
            if not isinstance(module, _comfy_ops.CastWeightBiasOp):
                return module.weight.to(device=device, dtype=dtype)
            weight, _bias = _comfy_ops.cast_bias_weight(module, dtype=dtype, device=device)
            return weight

    class MagiPatcher(_model_patcher.ModelPatcher):
        """ModelPatcher for engine models. LoRA patches on fp8- or GGUF-stored weights cannot be merged into those
        bytes: they are kept on the module and added after each decode (what ComfyUI-GGUF does); plain weights
        take ComfyUI's normal path (merged on load with a backup, or per use in lowvram)."""

        def patch_weight_to_device(self, key, device_to=None, inplace_update=False):
            if key not in self.patches:
                return
            mod_name, _, attr = key.rpartition(".")
            module = _comfy_utils.get_attr(self.model, mod_name) if mod_name else self.model
            if attr == "weight" and isinstance(module, (_EngineBlockLinear, _EngineCompactEmbedding)) and module.storage.compact:
                module.magi_decoded_patches = [_model_patcher.LowVramPatch(key, self.patches)]
                return
            super().patch_weight_to_device(key, device_to=device_to, inplace_update=inplace_update)

        def unpatch_model(self, device_to=None, unpatch_weights=True):
            super().unpatch_model(device_to=device_to, unpatch_weights=unpatch_weights)
            if unpatch_weights:
                for module in self.model.modules():
                    if hasattr(module, "magi_decoded_patches"):
                        del module.magi_decoded_patches

    class _DoRAAdapter(_LoRAAdapter):
        """A DoRA patch computed by the engine's formula (:meth:`magihuman.lora.LoraPatch.apply`: the norm of
        ``W + dW`` on the axis of the magnitude, per row range of a fused weight), so ComfyUI's merge equals the
        engine's; ComfyUI's own ``weight_decompose`` divides output-axis magnitudes by ``||W||``."""

        def __init__(self, patch):
            super().__init__(set(), (patch.up, patch.down, patch.alpha, None, patch.dora_scale, None))
            self.patch = patch

        def calculate_weight(self, weight, key, strength, strength_model, offset, function,
                             intermediate_dtype=torch.float32, original_weight=None):
            return self.patch.apply(weight, strength, function)

    def comfy_lora_patches(lora: LoraFile) -> dict:
        """The engine's parsed LoRA as ModelPatcher patches: LoRAAdapter / diff per target (DoRA: the engine's
        formula), fused row ranges as ``(key, (0, offset, length))`` keys."""
        out: dict = {}
        for p in lora.patches:
            value = (("diff", (p.diff,)) if p.kind != "lora" else _DoRAAdapter(p) if p.dora_scale is not None
                     else _LoRAAdapter(set(), (p.up, p.down, p.alpha, None, None, None)))
            for rows in p.rows or (None,):
                key = p.param if rows is None else (p.param, (0, rows[0], rows[1]))
                if key in out:
                    raise ValueError(f"{lora.path.name}: two LoRA entries patch {key} (e.g. {p.source}); merge them "
                                     "into one before loading")
                out[key] = value
        return out


def comfy_attention(q, k, v, mask=None):  # pragma: no cover - inside ComfyUI only
    """Engine attention backend "comfy": ComfyUI's optimized_attention (follows --use-sage-attention,
    --use-flash-attention, ...). Its kernels have no native GQA, so key/value heads are repeated."""
    if k.shape[1] != q.shape[1]:
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    if mask is not None:  # boolean "may attend" -> additive bias, as ComfyUI's kernels expect
        mask = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, float("-inf"))
    return _optimized_attention(q, k, v, q.shape[1], mask=mask, skip_reshape=True, skip_output_reshape=True)


if HAS_COMFY:  # pragma: no cover - inside ComfyUI only
    register_attention_backend("comfy", comfy_attention)


def operations():
    return MagiOps if HAS_COMFY else torch.nn


class ModelHandle:
    """What the custom model types carry: the engine model plus its ModelPatcher in ComfyUI.

    ``use()`` makes ComfyUI load it onto the compute device (respecting lowvram/offload) and
    returns the engine module; outside ComfyUI it is the module itself on the CPU.
    """

    def __init__(self, model: torch.nn.Module, kind: str, **info: Any) -> None:
        self.kind = kind
        self.info = info
        load_device, offload_device = devices(kind)
        self.device = load_device  # where use() puts the model: memory checks look here before loading
        # the engine computes where ComfyUI loads the model, whatever part of it a partial load leaves offloaded
        model.compute_device = load_device
        self.loras: tuple[tuple[LoraFile, float], ...] = ()
        if HAS_COMFY:  # pragma: no cover
            size = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
            self.patcher = MagiPatcher(model, load_device=load_device, offload_device=offload_device, size=size)
        else:
            self.patcher = None
        self._model = model

    @property
    def model(self) -> torch.nn.Module:
        return self._model

    def with_lora(self, lora: LoraFile, strength: float) -> "ModelHandle":
        """A new handle on the same weights with one more LoRA (this handle is unchanged, as ComfyUI expects of
        a node's input): in ComfyUI a patcher clone with the LoRA's weight patches."""
        new = object.__new__(ModelHandle)
        new.__dict__.update(self.__dict__)
        new.info = dict(self.info)
        new.loras = self.loras + ((lora, float(strength)),)
        if self.patcher is not None:  # pragma: no cover
            new.patcher = self.patcher.clone()
            new.patcher.add_patches(comfy_lora_patches(lora), float(strength))
        return new

    def use(self, memory_required: int = 0) -> torch.nn.Module:
        """The module, loaded by ComfyUI onto its device (with this handle's LoRA patches); ``memory_required``:
        bytes of activations the coming computation needs beside the weights (ComfyUI keeps them free,
        offloading more weights if needed). Without ComfyUI the engine applies this handle's LoRAs itself."""
        if self.patcher is not None:  # pragma: no cover
            _mm.load_models_gpu([self.patcher], memory_required=int(memory_required))
            model = self.patcher.model  # shared by every handle on these weights: set what THIS handle's LoRAs make it
            model.lora_variant = variant_with_loras(getattr(model, "variant", None), self.loras)
            return model
        if getattr(self._model, "loras", None) or self.loras:
            remove_lora(self._model)
            for lora, strength in self.loras:
                apply_lora(self._model, lora, strength)
        return self._model


# --------------------------------------------------------------------------------------------
# Progress and interruption
# --------------------------------------------------------------------------------------------
class InterruptedByUser(Exception):
    """Raised by :func:`check_interrupt` outside ComfyUI when :func:`request_interrupt` was called."""


_interrupt_flag = False


def request_interrupt(value: bool = True) -> None:
    """Outside ComfyUI: ask the running sampler to stop at its next step (tests, scripts)."""
    global _interrupt_flag
    _interrupt_flag = value


def check_interrupt() -> None:
    global _interrupt_flag
    if HAS_COMFY:  # pragma: no cover
        _mm.throw_exception_if_processing_interrupted()
    elif _interrupt_flag:
        _interrupt_flag = False
        raise InterruptedByUser("processing interrupted")


def _video_previewer():  # pragma: no cover - inside ComfyUI only
    """ComfyUI's cheap latent->RGB previewer with the public Wan2.2 factors (our latents are Wan2.2's,
    normalised the same way), or None when previews are off."""
    try:
        return _latent_preview.get_previewer(_mm.intermediate_device(), _latent_formats.Wan22())
    except Exception as e:  # noqa: BLE001 - previews are optional
        log.debug("MagiHuman: no latent previews (%s)", e)
        return None


def progress_callback(total: int) -> Callable[..., None]:
    """A per-step callback ``(step, total, x0_preview)``: progress bar with a latent preview of the
    first frame in ComfyUI, then the interrupt check."""
    bar = _comfy_utils.ProgressBar(total) if HAS_COMFY else None
    previewer = _video_previewer() if HAS_COMFY else None

    def cb(step: int, total_steps: int | None = None, x0=None, *_: Any, **__: Any) -> None:
        if bar is not None:  # pragma: no cover
            preview = None
            if previewer is not None and x0 is not None:
                preview = previewer.decode_latent_to_preview_image("JPEG", x0.detach().float())
            bar.update_absolute(step, total_steps or total, preview)
        check_interrupt()

    return cb


def free_memory() -> None:
    if HAS_COMFY:  # pragma: no cover
        _mm.soft_empty_cache()


# ============================================================================================
# NestedTensor access (AV latents, see nodes/latent_io.py) -- appended block, owned by latent I/O.
# ComfyUI carries its own audio+video latent (LTX-AV) as comfy.nested_tensor.NestedTensor([video, audio]) in
# ``samples``; MagiHuman latents use the same container inside ComfyUI. None outside ComfyUI (engine, tests).
# ============================================================================================
try:  # pragma: no cover - inside ComfyUI only
    from comfy.nested_tensor import NestedTensor as ComfyNestedTensor
except ImportError:
    ComfyNestedTensor = None
# ============================================================================================


# ============================================================================================
# Multi-GPU worker groups (nodes/multigpu.py) -- appended block, owned by the multi-GPU work.
# A handle with a group is an ordinary DiT handle whose use() returns a DiT driving magihuman.parallel.workers: rank 0
# is this process (its DiT loaded by ComfyUI as usual, LoRA patches included), the other ranks are worker processes,
# each with its own copy of the DiT (same file, same options, the same LoRA files applied by the engine).
# ============================================================================================
class GroupModelHandle(ModelHandle):
    """A DiT handle whose model runs sequence-parallel over ``gpus`` ranks (see :func:`multi_gpu_handle`)."""

    gpus: int
    timeout: float

    def with_lora(self, lora: LoraFile, strength: float) -> "GroupModelHandle":
        new = super().with_lora(lora, strength)  # a plain ModelHandle carrying our fields: keep the group
        new.__class__ = type(self)
        return new

    def use(self, memory_required: int = 0) -> torch.nn.Module:
        from ..magihuman.parallel.workers import parallel_dit

        model = super().use(memory_required)
        return parallel_dit(model, self.info["path"], self.gpus, timeout=self.timeout, host_device=self.device,
                            loras=[(str(lora.path), strength) for lora, strength in self.loras])


def multi_gpu_handle(handle: ModelHandle, gpus: int, timeout_seconds: float, *, where: str) -> GroupModelHandle:
    """A new handle on the same weights (``handle`` is unchanged) that runs its DiT over ``gpus`` ranks."""
    from ..magihuman.parallel.workers import worker_devices

    if not handle.info.get("path"):
        raise ValueError(f"{where}: this DiT was not loaded from a file by a MagiHuman loader; the workers need its "
                         "file to load their copies")
    if handle.model.local_attention_mode != "window":
        raise ValueError(f"{where}: the group runs the default 'window' attention plan")
    worker_devices(handle.device, gpus)  # enough GPUs? (clear error now, not at the first step)
    new = object.__new__(GroupModelHandle)
    new.__dict__.update(handle.__dict__)
    new.info = dict(handle.info)
    new.gpus, new.timeout = int(gpus), float(timeout_seconds)
    return new
# ============================================================================================
