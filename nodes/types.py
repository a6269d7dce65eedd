"""Custom socket types of the pack (created once; ComfyUI matches them by name)."""

from .compat import io

MagiDiT = io.Custom("MAGIHUMAN_DIT")            # base or distilled joint denoiser
MagiSRDiT = io.Custom("MAGIHUMAN_SR_DIT")       # 540p / 1080p super-resolution denoiser (own type: cannot feed a base sampler)
MagiTextEncoder = io.Custom("MAGIHUMAN_TEXT_ENCODER")
MagiTurboVAE = io.Custom("MAGIHUMAN_TURBO_VAE")
MagiVideoVAE = io.Custom("MAGIHUMAN_VIDEO_VAE")  # Wan2.2 VAE: image encode (TI2V) + full-quality decode
MagiAudioVAE = io.Custom("MAGIHUMAN_AUDIO_VAE")  # Stable Audio Open (Oobleck) VAE

CATEGORY = "MagiHuman"
