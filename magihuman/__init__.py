"""daVinci-MagiHuman inference engine: pure PyTorch, usable without ComfyUI.

Submodules: ``models`` (DiT, Turbo VAE, Wan2.2 VAE, Oobleck audio VAE, T5Gemma), ``sampling``,
``pipeline`` (stage functions and presets), ``checkpoints`` (streamed, safe loading), ``cli``.
"""

__version__ = "0.1.0"

__all__ = ["apply_lora", "remove_lora"]


def __getattr__(name: str):
    """``magihuman.apply_lora`` / ``remove_lora`` (the public API) without importing torch on ``import magihuman``."""
    if name in __all__:
        from . import lora  # noqa: PLC0415 - the package face stays light; lora imports the models

        return getattr(lora, name)
    raise AttributeError(f"module 'magihuman' has no attribute {name!r}")
