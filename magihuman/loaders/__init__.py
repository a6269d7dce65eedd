"""Model files -> engine models, for everything but the DiT (whose loader is :mod:`magihuman.checkpoints`).

Each module declares its model's key map and joins the weights layer (:mod:`magihuman.weights`: open,
map, check from headers, stream) to a model built on ``meta`` (:mod:`magihuman.models`).
"""

from .audio_vae import load_audio_vae
from .text_encoder import load_text_encoder, save_encoder_file  # load: T5GemmaEncoder.from_pretrained
from .turbo_vae import convert_turbo_checkpoint, load_turbo_vae
from .video_vae import convert_wan_vae_to_safetensors, load_wan_vae

__all__ = ["load_audio_vae", "load_text_encoder", "save_encoder_file", "convert_turbo_checkpoint", "load_turbo_vae",
           "convert_wan_vae_to_safetensors", "load_wan_vae"]
