"""Regional ``torch.compile`` of the DiT: compile the transformer-layer forward, not the whole model.

All layers share one Python code object, and with torch's default module inlining their parameters
are graph inputs, so layers of the same kind reuse one compiled graph. A "kind" is what changes the
traced code: expert (mm) vs shared weights, gelu7 vs swiglu7 MLP, local vs global attention,
post-norms. The released base/distill model has 3 kinds (mm+gelu7, mm+swiglu7, swiglu7), the
1080p SR model up to 5. The token-segment offsets and text lengths are Python ints the graphs
specialise on, so a new resolution, audio length or text length compiles each kind once more (a
sampling run keeps them fixed over its steps); the recompile limit is raised to allow that once.
Only ``layer.forward`` is compiled, so module hooks (block offload, host patches) run eagerly
around it without recompiles.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

__all__ = ["compile_dit_blocks", "uncompile_dit_blocks", "is_compiled", "layer_kinds"]


def layer_kinds(model) -> dict[tuple, list[int]]:
    """Layer indices grouped by what makes a layer trace differently (an upper bound on graphs)."""
    c = model.config
    kinds: dict[tuple, list[int]] = {}
    for i in range(c.num_layers):
        key = (i in c.mm_layers, i in c.gelu7_layers, i in c.local_attn_layers, i in c.post_norm_layers)
        kinds.setdefault(key, []).append(i)
    return kinds


def compile_dit_blocks(model, *, backend: str = "inductor", mode: Optional[str] = None, dynamic: Optional[bool] = None,
                       fullgraph: bool = False, options: Optional[dict[str, Any]] = None,
                       raise_recompile_limit: bool = True):
    """Compile every ``model.block.layers[i]`` in place with ``torch.compile`` (arguments as there);
    returns ``model``. Adapter, final heads and the per-forward setup stay eager. Raises the dynamo
    recompile limit to cover the layer kinds (plus one re-trace each for a new shape) when needed."""
    kinds = len(layer_kinds(model))
    if raise_recompile_limit:
        import torch._dynamo.config as dynamo_config

        name = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
        setattr(dynamo_config, name, max(getattr(dynamo_config, name), 2 * kinds + 2))
    for layer in model.block.layers:
        if is_compiled(layer):  # recompile with the new options
            del layer.forward
        # the layer's forward, not its __call__: module hooks (block offload) stay eager around it
        layer.forward = torch.compile(layer.forward, backend=backend, mode=mode, dynamic=dynamic,
                                      fullgraph=fullgraph, options=options)
    return model


def is_compiled(layer) -> bool:
    return "forward" in vars(layer)


def uncompile_dit_blocks(model):
    """Undo :func:`compile_dit_blocks` (layers run eagerly again); returns ``model``."""
    for layer in model.block.layers:
        if is_compiled(layer):
            del layer.forward
    return model
