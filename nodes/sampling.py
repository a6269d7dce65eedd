"""Sampler nodes: distilled 8-step, base UniPC with CFG, latent super-resolution with audio in the loop."""

from __future__ import annotations

from ..magihuman import pipeline
from ..magihuman import sampling as S
from ..magihuman.geometry import BASE_STEPS, DEFAULT_FRAME_RECEPTIVE_FIELD, DISTILLED_STEPS, SR_STEPS
from . import compat
from .v3 import MagiNode, io
from .latent_io import from_latent, text_conditioning, to_latent
from .types import MagiDiT, MagiSRDiT, MagiVideoVAE

SEED_MAX = 0xFFFFFFFFFFFFFFFF


def _seed_input():
    return io.Int.Input("seed", default=0, min=0, max=SEED_MAX, control_after_generate=True,
                        tooltip="Noise seed (one generator per stage; same seed, same device -> same result).")


def _shift_input():
    return io.Float.Input("shift", default=S.DEFAULT_SHIFT, min=0.1, max=20.0, step=0.1,
                          tooltip="Flow-schedule shift (official 5).")


def prepare(model_handle, av, where: str, *, cfg: bool, batch_cfg: bool = True, size=None):
    """Check the run fits BEFORE the model is moved to the device, then let ComfyUI load it with room for the
    activations the engine estimates (``memory_required``: lowvram/offload decisions see the latent size)."""
    ranks = int(getattr(model_handle, "gpus", 1))  # a Multi-GPU handle: this GPU holds 1/N of the activations
    need = pipeline.check_fits(model_handle.model, av, where, cfg=cfg, batch_cfg=batch_cfg, size=size,
                               device=model_handle.device, ranks=ranks)
    return model_handle.use(memory_required=need or 0)  # unpriced: ComfyUI's own default reserve


def _finish(out):
    out.video = out.video.to(compat.intermediate_device())
    out.audio = out.audio.to(compat.intermediate_device())
    compat.free_memory()
    return io.NodeOutput(to_latent(out))


class MagiHumanDistilledSampler(MagiNode):
    DISPLAY_NAME, SUBCATEGORY = "MagiHuman Distilled Sampler", "sampling"
    CONNECT = ("In: `model` (distilled DiT), `positive`, `latent`. Out: `latent` → Turbo VAE Decode + Audio Decode, "
               "or Latent Super-Resolution.")

    @classmethod
    def define_schema(cls):
        return cls.schema(
            description="Joint audio+video denoising with the distilled DiT: 8 re-noising steps, one pass, no CFG. "
                        "Timestep-free: the model reads the noise level from the latents.",
            inputs=[
                MagiDiT.Input("model"),
                io.Conditioning.Input("positive"),
                io.Latent.Input("latent"),
                _seed_input(),
                io.Int.Input("steps", default=DISTILLED_STEPS, min=1, max=100, tooltip="The distilled model was trained for 8."),
                _shift_input(),
            ],
            outputs=[io.Latent.Output(display_name="latent")],
        )

    @classmethod
    def execute(cls, model, positive, latent, seed, steps, shift):
        av = from_latent(latent, cls.name())
        cond = text_conditioning(positive, where=cls.name())
        dit = prepare(model, av, cls.name(), cfg=False)
        out = pipeline.denoise(dit, av, cond, sampler="distilled", steps=steps, seed=seed, shift=shift,
                               cfg=False, callback=compat.progress_callback(steps))
        return _finish(out)


class MagiHumanBaseSampler(MagiNode):
    DISPLAY_NAME, SUBCATEGORY = "MagiHuman Base Sampler (CFG)", "sampling"
    CONNECT = ("In: `model` (base DiT), `positive` and `negative` from Text Encode, `latent`. Out: `latent` → "
               "decoders or Latent Super-Resolution.")

    @classmethod
    def define_schema(cls):
        return cls.schema(
            description="Joint audio+video denoising with the base DiT: UniPC (bh2, order 2) with classifier-free "
                        "guidance on video and audio.",
            inputs=[
                MagiDiT.Input("model"),
                io.Conditioning.Input("positive"),
                io.Conditioning.Input("negative"),
                io.Latent.Input("latent"),
                _seed_input(),
                io.Int.Input("steps", default=BASE_STEPS, min=1, max=200, tooltip="Official: 32."),
                io.Float.Input("video_guidance", default=S.VIDEO_GUIDANCE_HIGH, min=0.0, max=20.0, step=0.1,
                               tooltip="Video CFG scale while the timestep is above the switch (official 5)."),
                io.Float.Input("video_guidance_low", default=S.VIDEO_GUIDANCE_LOW, min=0.0, max=20.0, step=0.1,
                               tooltip="Video CFG scale at and below the switch timestep (official 2)."),
                io.Int.Input("guidance_switch_t", default=S.VIDEO_GUIDANCE_SWITCH, min=0, max=1000,
                             tooltip="Timestep (0-1000) where the video scale drops to the low value (official 500)."),
                io.Float.Input("audio_guidance", default=S.AUDIO_GUIDANCE_SCALE, min=0.0, max=20.0, step=0.1,
                               tooltip="Audio CFG scale (official 5)."),
                _shift_input(),
                io.Boolean.Input("batch_cfg", default=True,
                                 tooltip="Run prompt and negative prompt as one batch of 2 (same result; faster on "
                                         "GPUs, needs more memory)."),
            ],
            outputs=[io.Latent.Output(display_name="latent")],
        )

    @classmethod
    def execute(cls, model, positive, negative, latent, seed, steps, video_guidance, video_guidance_low,
                guidance_switch_t, audio_guidance, shift, batch_cfg):
        av = from_latent(latent, cls.name())
        cond = text_conditioning(positive, negative, where=cls.name())
        dit = prepare(model, av, cls.name(), cfg=True, batch_cfg=batch_cfg)
        out = pipeline.denoise(dit, av, cond, sampler="unipc", steps=steps, seed=seed, shift=shift,
                               video_guidance=video_guidance, video_guidance_low=video_guidance_low,
                               guidance_switch_t=guidance_switch_t, audio_guidance=audio_guidance, cfg=True,
                               batch_cfg=batch_cfg, callback=compat.progress_callback(steps))
        return _finish(out)


SR_SIZES = {"540p (896x512)": (896, 512), "1080p (1920x1088)": (1920, 1088), "custom": None}


class MagiHumanLatentSR(MagiNode):
    DISPLAY_NAME, SUBCATEGORY = "MagiHuman Latent Super-Resolution", "sampling"
    CONNECT = ("In: `sr_model`, `positive` (+ `negative` with CFG), the sampler's `latent`. Out: `latent` → Turbo "
               "VAE Decode + Audio Decode.")

    @classmethod
    def define_schema(cls):
        return cls.schema(
            description="Trilinear latent upscale + re-noise, then a few UniPC steps of the SR DiT; the base audio is "
                        "re-noised and fed at every step (never updated) and the clean base audio is kept.",
            inputs=[
                MagiSRDiT.Input("sr_model"),
                io.Conditioning.Input("positive"),
                io.Latent.Input("latent", tooltip="A denoised base latent."),
                io.Combo.Input("resolution", options=list(SR_SIZES), default="540p (896x512)",
                               tooltip="Target size; 'custom' uses width/height (snapped down to multiples of 32)."),
                io.Int.Input("width", default=896, min=32, max=4096, step=32, tooltip="Used when resolution is custom."),
                io.Int.Input("height", default=512, min=32, max=4096, step=32, tooltip="Used when resolution is custom."),
                _seed_input(),
                io.Int.Input("steps", default=SR_STEPS, min=1, max=50, tooltip="Official: 5."),
                io.Int.Input("noise_index", default=S.SR_NOISE_INDEX, min=0, max=999,
                             tooltip="Re-noise level: index into the ZeroSNR sigma table (official 220, sigma≈0.839; "
                                     "0 = no re-noise)."),
                io.Float.Input("audio_noise_scale", default=S.SR_AUDIO_NOISE_SCALE, min=0.0, max=1.0, step=0.05,
                               tooltip="SR audio input = scale·noise + (1-scale)·base audio (official 0.7)."),
                io.Boolean.Input("cfg", default=False, tooltip="Official SR runs one pass; on: CFG with the negative."),
                io.Float.Input("guidance", default=S.SR_GUIDANCE_SCALE, min=0.0, max=20.0, step=0.1,
                               tooltip="SR CFG scale (official 3.5); the first 13 latent frames are capped at 2."),
                io.Int.Input("local_attention_frames", default=DEFAULT_FRAME_RECEPTIVE_FIELD, min=-1, max=64,
                             tooltip="1080p model: video frames see ±this many latent frames (official 11; -1 = full "
                                     "attention). No effect on the 540p model."),
                io.Conditioning.Input("negative", optional=True, tooltip="Needed only with cfg on."),
                MagiVideoVAE.Input("video_vae", optional=True,
                                   tooltip="Needed for TI2V latents: the image is re-encoded at the SR size."),
            ],
            outputs=[io.Latent.Output(display_name="latent")],
        )

    @classmethod
    def execute(cls, sr_model, positive, latent, resolution, width, height, seed, steps, noise_index,
                audio_noise_scale, cfg, guidance, local_attention_frames, negative=None, video_vae=None):
        where = cls.name()
        w, h = SR_SIZES[resolution] or (width, height)
        av = from_latent(latent, where)
        if cfg and negative is None:
            raise ValueError(f"{where}: cfg is on but no negative conditioning is connected")
        if av.image_latent is not None and video_vae is None:
            raise ValueError(f"{where}: this is an image-to-video latent: connect the Wan2.2 VAE to 'video_vae' so "
                             "the first frame is re-encoded at the SR size")
        cond = text_conditioning(positive, negative if cfg else None, where=where)
        dit = prepare(sr_model, av, where, cfg=bool(cfg), size=pipeline.snap_size(w, h, what=f"{where}: "))
        out = pipeline.super_resolve(dit, av, cond, width=w, height=h, seed=seed, steps=steps,
                                     noise_index=noise_index, audio_noise_scale=audio_noise_scale, cfg=cfg,
                                     guidance=guidance, video_vae=video_vae.use() if video_vae is not None else None,
                                     local_attention=local_attention_frames,
                                     callback=compat.progress_callback(steps))
        return _finish(out)


SAMPLING_NODES = [MagiHumanDistilledSampler, MagiHumanBaseSampler, MagiHumanLatentSR]
