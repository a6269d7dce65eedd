"""Custom socket types of the pack (created once; ComfyUI matches them by name) with what each one is, and the
lookup of a node's display name by its id (every node declares its own: :class:`.v3.MagiNode`)."""

from .v3 import MagiNode, io

TYPE_LABELS: dict[str, str] = {}  # socket type -> what an artist calls it (help pages)


def custom(io_type: str, label: str):
    """A custom socket type, with the words the help pages use for it."""
    TYPE_LABELS[io_type] = label
    return io.Custom(io_type)


MagiDiT = custom("MAGIHUMAN_DIT", "DiT model")  # base or distilled joint denoiser
MagiSRDiT = custom("MAGIHUMAN_SR_DIT", "SR DiT model")  # 540p / 1080p super-resolution (own type: no base sampler)
MagiTextEncoder = custom("MAGIHUMAN_TEXT_ENCODER", "text encoder")
MagiTurboVAE = custom("MAGIHUMAN_TURBO_VAE", "Turbo VAE")
MagiVideoVAE = custom("MAGIHUMAN_VIDEO_VAE", "Wan2.2 VAE")  # image encode (TI2V) + full-quality decode
MagiAudioVAE = custom("MAGIHUMAN_AUDIO_VAE", "audio VAE")  # Stable Audio Open (Oobleck) VAE


def node_name(node_id: str) -> str:
    """What the artist sees on the node ``node_id`` (for messages that point to another node)."""
    return MagiNode.declared()[node_id].DISPLAY_NAME
