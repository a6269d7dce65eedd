"""Custom socket types of the pack (created once; ComfyUI matches them by name), and the one table of node names."""

from .v3 import io

MagiDiT = io.Custom("MAGIHUMAN_DIT")            # base or distilled joint denoiser
MagiSRDiT = io.Custom("MAGIHUMAN_SR_DIT")       # 540p / 1080p super-resolution denoiser (own type: cannot feed a base sampler)
MagiTextEncoder = io.Custom("MAGIHUMAN_TEXT_ENCODER")
MagiTurboVAE = io.Custom("MAGIHUMAN_TURBO_VAE")
MagiVideoVAE = io.Custom("MAGIHUMAN_VIDEO_VAE")  # Wan2.2 VAE: image encode (TI2V) + full-quality decode
MagiAudioVAE = io.Custom("MAGIHUMAN_AUDIO_VAE")  # Stable Audio Open (Oobleck) VAE

CATEGORY = "MagiHuman"

# node id -> (display name, sub-category). Schemas and every message that names a node read this table.
NODES: dict[str, tuple[str, str]] = {
    "MagiHumanDiTLoader": ("MagiHuman DiT Loader", "loaders"),
    "MagiHumanSRDiTLoader": ("MagiHuman SR DiT Loader", "loaders"),
    "MagiHumanTextEncoderLoader": ("MagiHuman T5Gemma Loader", "loaders"),
    "MagiHumanTurboVAELoader": ("MagiHuman Turbo VAE Loader", "loaders"),
    "MagiHumanVideoVAELoader": ("MagiHuman Wan2.2 VAE Loader", "loaders"),
    "MagiHumanAudioVAELoader": ("MagiHuman Audio VAE Loader", "loaders"),
    "MagiHumanLoraLoader": ("MagiHuman LoRA Loader", "loaders"),
    "MagiHumanSRLoraLoader": ("MagiHuman SR LoRA Loader", "loaders"),
    "MagiHumanMultiGPU": ("MagiHuman Multi-GPU", "loaders"),
    "MagiHumanSRMultiGPU": ("MagiHuman SR Multi-GPU", "loaders"),
    "MagiHumanTextEncode": ("MagiHuman Text Encode", "conditioning"),
    "MagiHumanEmptyAVLatent": ("MagiHuman Empty AV Latent", "latent"),
    "MagiHumanImageToVideo": ("MagiHuman Image To Video (TI2V)", "conditioning"),
    "MagiHumanReferenceAudio": ("MagiHuman Reference Audio (A2V)", "conditioning"),
    "MagiHumanDistilledSampler": ("MagiHuman Distilled Sampler", "sampling"),
    "MagiHumanBaseSampler": ("MagiHuman Base Sampler (CFG)", "sampling"),
    "MagiHumanLatentSR": ("MagiHuman Latent Super-Resolution", "sampling"),
    "MagiHumanTurboVAEDecode": ("MagiHuman Turbo VAE Decode", "decode"),
    "MagiHumanVideoVAEDecode": ("MagiHuman Wan2.2 VAE Decode (tiled)", "decode"),
    "MagiHumanAudioDecode": ("MagiHuman Audio Decode", "decode"),
    "MagiHumanSplitAVLatent": ("MagiHuman Split AV Latent", "latent"),
    "MagiHumanJoinAVLatent": ("MagiHuman Join AV Latent", "latent"),
    "MagiHumanEnhancedPrompt": ("MagiHuman Enhanced Prompt", "prompt"),
    "MagiHumanLLMPromptRequest": ("MagiHuman LLM Prompt Request", "prompt"),
    "MagiHumanCheckEnhancedPrompt": ("MagiHuman Check Enhanced Prompt", "prompt"),
    "MagiHumanLongVideo": ("MagiHuman Long Video", "long video"),
    "MagiHumanExtend": ("MagiHuman Extend", "long video"),
}


def node_name(node_id: str) -> str:
    """What the artist sees on the node (for messages that point to another node)."""
    return NODES[node_id][0]


def node_schema(node_id: str, **fields) -> io.Schema:
    """``io.Schema`` with the display name and category of :data:`NODES`."""
    display, sub = NODES[node_id]
    return io.Schema(node_id=node_id, display_name=display, category=f"{CATEGORY}/{sub}", **fields)
