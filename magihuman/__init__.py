"""daVinci-MagiHuman inference engine: pure PyTorch, usable without ComfyUI.

Submodules: ``models`` (DiT, Turbo VAE, Wan2.2 VAE, Oobleck audio VAE, T5Gemma), ``sampling``,
``pipeline`` (stage functions and presets), ``checkpoints`` (streamed, safe loading), ``cli``.
"""

__version__ = "0.1.0"
