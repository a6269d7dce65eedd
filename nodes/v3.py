"""ComfyUI's V3 node API: inside ComfyUI the real ``comfy_api.latest`` (``io``, ``ui``, ``ComfyExtension``);
without it (tests, scripts) a small stand-in with the same call shapes, so the node classes can be imported,
their schemas inspected and their ``execute`` methods run directly (:func:`run_node`). The pack's node base
:class:`MagiNode` lives here too. ComfyUI's runtime (folders, model management, progress) is :mod:`.compat`.
"""

from __future__ import annotations

import abc
import inspect
from dataclasses import dataclass, field
from typing import Any

try:  # pragma: no cover - exercised only inside ComfyUI (see the harness run in the README)
    from comfy_api.latest import ComfyExtension, io, ui

    HAS_COMFY = True
except ImportError:
    HAS_COMFY = False


# --------------------------------------------------------------------------------------------
# Stand-in for comfy_api.latest when ComfyUI is absent
# --------------------------------------------------------------------------------------------
if not HAS_COMFY:

    class _Input:
        def __init__(self, id: str, display_name: str | None = None, optional: bool = False,
                     tooltip: str | None = None, default: Any = None, **extra: Any) -> None:
            self.id = id
            self.display_name = display_name
            self.optional = optional
            self.tooltip = tooltip
            self.default = default
            for k, v in extra.items():
                setattr(self, k, v)

    class _Output:
        def __init__(self, id: str | None = None, display_name: str | None = None,
                     tooltip: str | None = None, is_output_list: bool = False) -> None:
            self.id = id
            self.display_name = display_name
            self.tooltip = tooltip
            self.is_output_list = is_output_list

    def _comfytype(io_type: str):
        cls_input = type("Input", (_Input,), {"io_type": io_type})
        cls_output = type("Output", (_Output,), {"io_type": io_type})
        return type(io_type, (), {"io_type": io_type, "Input": cls_input, "Output": cls_output})

    class _ComboInput(_Input):
        io_type = "COMBO"

        def __init__(self, id: str, options=None, **kw: Any) -> None:
            super().__init__(id, **kw)
            self.options = list(options or [])

    @dataclass
    class _Schema:
        node_id: str
        display_name: str | None = None
        category: str = "sd"
        inputs: list = field(default_factory=list)
        outputs: list = field(default_factory=list)
        hidden: list = field(default_factory=list)
        description: str = ""
        is_output_node: bool = False
        not_idempotent: bool = False

    class _NodeOutput:
        def __init__(self, *args: Any, ui: Any = None, **kwargs: Any) -> None:
            self.args = args
            self.ui = ui

        @property
        def result(self):
            return self.args

    class _ComfyNode(abc.ABC):
        @classmethod
        @abc.abstractmethod
        def define_schema(cls):
            """Each node returns its Schema (as in comfy_api.latest.io.ComfyNode)."""

    class _IONamespace:
        ComfyNode = _ComfyNode
        Schema = _Schema
        NodeOutput = _NodeOutput
        Int = _comfytype("INT")
        Float = _comfytype("FLOAT")
        String = _comfytype("STRING")
        Boolean = _comfytype("BOOLEAN")
        Image = _comfytype("IMAGE")
        Audio = _comfytype("AUDIO")
        Latent = _comfytype("LATENT")
        Conditioning = _comfytype("CONDITIONING")
        Video = _comfytype("VIDEO")
        Combo = type("COMBO", (), {"io_type": "COMBO", "Input": _ComboInput,
                                    "Output": type("Output", (_Output,), {"io_type": "COMBO"})})

        @staticmethod
        def Custom(io_type: str):
            return _comfytype(io_type)

    class _PreviewText:
        def __init__(self, value: str, **kw: Any) -> None:
            self.value = value

        def as_dict(self):
            return {"text": (self.value,)}

    class _UINamespace:
        PreviewText = _PreviewText

    class ComfyExtension(abc.ABC):  # mirrors comfy_api.latest.ComfyExtension
        async def on_load(self) -> None:
            return None

        @abc.abstractmethod
        async def get_node_list(self):
            """The node classes of the extension."""

    io = _IONamespace()
    ui = _UINamespace()


# --------------------------------------------------------------------------------------------
# The pack's node base and a stand-in for ComfyUI's own execution (defaults, combo validation)
# --------------------------------------------------------------------------------------------
CATEGORY = "MagiHuman"


class MagiNode(io.ComfyNode):
    """Base of the pack's nodes. A node is declared once, on its class: its class name is its node id,
    ``DISPLAY_NAME`` and ``SUBCATEGORY`` name and file it for the artist, ``CONNECT`` says what to wire to it (its
    help page); :meth:`schema` builds the ``io.Schema`` from them, and messages name other nodes through
    :meth:`declared`. (ComfyUI runs locked clones of node classes, a new one per execution, whose bases include
    the declared class and a copy of its attributes: the node is looked up along the bases, a clone is never
    declared itself.)"""

    DISPLAY_NAME: str = ""
    SUBCATEGORY: str = ""
    CONNECT: str = ""
    _declared: dict[str, type] = {}

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        declared = MagiNode._declared.values()
        if "DISPLAY_NAME" in cls.__dict__ and not any(c in declared for c in cls.__mro__[1:]):
            MagiNode._declared[cls.__name__] = cls  # a node of the pack (not a shared base, not a clone of a node)

    @classmethod
    def declared(cls) -> dict[str, type]:
        """node id -> class of every node of the pack (its modules imported)."""
        return dict(MagiNode._declared)

    @classmethod
    def _node(cls) -> type:
        return next(c for c in cls.__mro__ if MagiNode._declared.get(c.__name__) is c)

    @classmethod
    def node_id(cls) -> str:
        return cls._node().__name__

    @classmethod
    def name(cls) -> str:
        """What the artist sees on this node (error messages use it, so they never drift from the node)."""
        return cls._node().DISPLAY_NAME

    @classmethod
    def schema(cls, **fields) -> io.Schema:
        """``io.Schema`` with the node's id, display name and category."""
        node = cls._node()
        return io.Schema(node_id=node.__name__, display_name=node.DISPLAY_NAME,
                         category=f"{CATEGORY}/{node.SUBCATEGORY}", **fields)


def _own_validate_inputs(node_cls):
    """The node's ``validate_inputs`` when it overrides ComfyUI's (which only says it is not implemented)."""
    found = getattr(node_cls, "validate_inputs", None)
    base = getattr(io.ComfyNode, "validate_inputs", None)
    if found is None or (base is not None and getattr(found, "__func__", found) is getattr(base, "__func__", base)):
        return None
    return found


def run_node(node_cls, *, validate: bool = True, **inputs):
    """Execute a node the way ComfyUI does, without ComfyUI (tests, scripts): inputs that are not given
    take their schema default, combo values must be among the options (``validate=False`` skips that, as an
    API prompt naming a file deleted since the list was made would), unconnected optional inputs are left
    out. Returns the NodeOutput."""
    schema = node_cls.define_schema()
    check = _own_validate_inputs(node_cls)  # as in ComfyUI: the inputs it takes skip the combo check, it decides
    own = set(inspect.signature(check).parameters) if check is not None else set()
    args = {}
    for inp in schema.inputs:
        if inp.id in inputs:
            value = inputs[inp.id]
            options = getattr(inp, "options", None)
            if validate and options is not None and inp.id not in own and value not in options:
                raise ValueError(f"{schema.display_name}: {inp.id} must be one of {list(options)}, got {value!r}")
            args[inp.id] = value
        elif getattr(inp, "default", None) is not None:
            args[inp.id] = inp.default
        elif getattr(inp, "options", None) and not getattr(inp, "optional", False):
            args[inp.id] = inp.options[0]
    unknown = set(inputs) - {inp.id for inp in schema.inputs}
    if unknown:
        raise TypeError(f"{schema.display_name} has no input(s) {sorted(unknown)}")
    if validate and own:
        verdict = check(**{k: v for k, v in args.items() if k in own})
        if verdict is not True:
            raise ValueError(f"{schema.display_name}: {verdict}")
    return node_cls.execute(**args)


