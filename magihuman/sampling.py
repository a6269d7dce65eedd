"""Sampling maths of daVinci-MagiHuman: flow sigmas, the distilled re-noising step, UniPC (bh2),
the ZeroSNR table used to re-noise for latent super-resolution, guidance helpers and seeded noise.

Everything here is model-agnostic: it sees velocities and latents, never the DiT.
Scalar arithmetic follows the official inference code dtype for dtype (float32 sigmas kept as 0-dim
CPU tensors), so a run reproduces the official numbers, not only the formulas.

Seeds: a pipeline stage (base, then SR) owns ONE ``torch.Generator`` made by :func:`make_generator`
and draws all of its noise from it in a fixed order (initial latents, then per-step noise, then
re-noising). Noise is drawn on the generator's device, so a CPU generator gives the same latents on
every device.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

NUM_TRAIN_TIMESTEPS = 1000
DEFAULT_SHIFT = 5.0

# Official evaluation defaults (inference/common/config.py).
VIDEO_GUIDANCE_HIGH = 5.0      # video_txt_guidance_scale while t > 500
VIDEO_GUIDANCE_LOW = 2.0       # hard-coded in the official loop for t <= 500
VIDEO_GUIDANCE_SWITCH = 500
AUDIO_GUIDANCE_SCALE = 5.0     # audio_txt_guidance_scale
SR_GUIDANCE_SCALE = 3.5        # sr_video_txt_guidance_scale
SR_CFG_TRICK_FRAMES = 13       # cfg_trick_start_frame
SR_CFG_TRICK_VALUE = 2.0       # cfg_trick_value
SR_NOISE_INDEX = 220           # noise_value: index into zero_snr_sigmas()
SR_AUDIO_NOISE_SCALE = 0.7     # sr_audio_noise_scale

# The official negative prompt (MagiEvaluator). It is a model input: keep it byte for byte.
DEFAULT_NEGATIVE_PROMPT = (
    "Bright tones, overexposed, static, blurred details, subtitles, style, works, paintings, images, "
    "static, overall gray, worst quality, low quality, JPEG compression residue, ugly, incomplete, "
    "extra fingers, poorly drawn hands, poorly drawn faces, deformed, disfigured, misshapen limbs, "
    "fused fingers, still picture, messy background, three legs, many people in the background, "
    "walking backwards"
    ", low quality, worst quality, poor quality, noise, background noise, hiss, hum, buzz, crackle, "
    "static, compression artifacts, MP3 artifacts, digital clipping, distortion, muffled, muddy, "
    "unclear, echo, reverb, room echo, over-reverberated, hollow sound, distant, washed out, harsh, "
    "shrill, piercing, grating, tinny, thin sound, boomy, bass-heavy, flat EQ, over-compressed, "
    "abrupt cut, jarring transition, sudden silence, looping artifact, music, instrumental, sirens, "
    "alarms, crowd noise, unrelated sound effects, chaotic, disorganized, messy, cheap sound"
    ", emotionless, flat delivery, deadpan, lifeless, apathetic, robotic, mechanical, monotone, "
    "flat intonation, undynamic, boring, reading from a script, AI voice, synthetic, text-to-speech, "
    "TTS, insincere, fake emotion, exaggerated, overly dramatic, melodramatic, cheesy, cringey, "
    "hesitant, unconfident, tired, weak voice, stuttering, stammering, mumbling, slurred speech, "
    "mispronounced, bad articulation, lisp, vocal fry, creaky voice, mouth clicks, lip smacks, "
    "wet mouth sounds, heavy breathing, audible inhales, plosives, p-pops, coughing, "
    "clearing throat, sneezing, speaking too fast, rushed, speaking too slow, dragged out, "
    "unnatural pauses, awkward silence, choppy, disjointed, multiple speakers, two voices, "
    "background talking, out of tune, off-key, autotune artifacts"
)


def _as_sigma(sigma) -> torch.Tensor:
    """A sigma as the official code holds it: a float32 0-dim CPU tensor (mixes with any device)."""
    if isinstance(sigma, torch.Tensor):
        if sigma.numel() != 1:
            raise ValueError(f"sigma must be a scalar (float or 0-dim tensor), got shape {tuple(sigma.shape)}")
        return sigma.detach().reshape(()).to(device="cpu", dtype=torch.float32)
    return torch.tensor(float(sigma), dtype=torch.float32)


def _check_same_shape(name: str, tensor: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if tensor.shape != ref.shape:
        raise ValueError(f"{name} has shape {tuple(tensor.shape)} but must match {ref_name} "
                         f"{tuple(ref.shape)}; draw it with randn_like_gen({ref_name}, generator)")


# --------------------------------------------------------------------------------------------
# Flow-matching schedule (FlowUniPCMultistepScheduler.set_timesteps)
# --------------------------------------------------------------------------------------------

def flow_schedule(steps: int, shift: float = DEFAULT_SHIFT) -> tuple[torch.Tensor, torch.Tensor]:
    """Timesteps (int64 [steps]) and sigmas (float32 [steps + 1], last 0) of the official sampler.

    The training sigmas are ``1 - linspace(1, 1/1000, 1000)`` reversed and stored as float32, so
    sigma_max is float32(0.999) and sigma_min 0. The inference grid is a float64 linspace between
    them, warped by ``shift·s / (1 + (shift-1)·s)``; timesteps are ``1000·s`` truncated.
    """
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if isinstance(shift, bool) or not np.isfinite(float(shift)) or float(shift) <= 0:
        raise ValueError(f"shift must be a positive number (official 5.0), got {shift!r}")
    steps = int(steps)
    sigma_max = float(np.float32(1.0 - 1.0 / NUM_TRAIN_TIMESTEPS))
    sigma_min = 0.0
    s = np.linspace(sigma_max, sigma_min, steps + 1)[:-1]  # float64
    s = shift * s / (1 + (shift - 1) * s)
    timesteps = torch.from_numpy(s * NUM_TRAIN_TIMESTEPS).to(torch.int64)
    sigmas = torch.from_numpy(np.concatenate([s, [0.0]]).astype(np.float32))
    return timesteps, sigmas


# --------------------------------------------------------------------------------------------
# Distilled model: 8-step "ddim" re-noising step (official step_ddim)
# --------------------------------------------------------------------------------------------

def distilled_step(velocity: torch.Tensor, sample: torch.Tensor, sigma, sigma_next,
                   noise: torch.Tensor) -> torch.Tensor:
    """Jump to the clean estimate ``x0 = x - σ·v`` and re-noise it to σ' with fresh noise ε:
    ``σ'·ε + (1 - σ')·x0``. Used for the video and the audio latent alike."""
    _check_same_shape("velocity", velocity, "sample", sample)
    _check_same_shape("noise", noise, "sample", sample)
    sigma = _as_sigma(sigma)
    sigma_next = _as_sigma(sigma_next)
    x0 = sample - sigma * velocity
    return sigma_next * noise + (1 - sigma_next) * x0


# --------------------------------------------------------------------------------------------
# UniPC multistep (bh2, order 2, flow prediction, data prediction, lower-order final)
# --------------------------------------------------------------------------------------------

def _log_snr(sigma: torch.Tensor) -> torch.Tensor:
    """lambda = log(alpha) - log(sigma) with alpha = 1 - sigma (+inf at sigma = 0)."""
    return torch.log(1 - sigma) - torch.log(sigma)


class UniPCSampler:
    """Stateful UniPC sampler for flow-matching velocities: the official FlowUniPCMultistepScheduler
    with its release settings (solver order 2, B(h) = e^h - 1 ("bh2"), updates on the x0
    prediction, order 1 on the last step, UniC corrector from the second step on, final sigma 0).

    Call :meth:`step` once per timestep of :attr:`timesteps`, in order; one sampler per latent
    (video and audio each get their own). ``reset()`` starts a new trajectory.
    """

    solver_order = 2

    def __init__(self, steps: int, shift: float = DEFAULT_SHIFT):
        self.timesteps, self.sigmas = flow_schedule(steps, shift)  # int64 [n], float32 [n + 1] (CPU)
        self.num_steps = len(self.timesteps)
        self.shift = shift
        self.reset()

    def reset(self) -> None:
        self.step_index: int | None = None
        self._x0_history: list[torch.Tensor] = []   # converted outputs, oldest first (≤ 2)
        self._warm_steps = 0                          # steps taken, capped at the solver order
        self._last_sample: torch.Tensor | None = None  # sample the last predictor started from
        self._last_order: int | None = None           # order the last predictor used

    def index_for_timestep(self, timestep) -> int:
        """Where a trajectory starts: the position of ``timestep`` in the schedule (the second one
        if it occurs twice, as the official scheduler does)."""
        t = timestep.detach().to("cpu") if isinstance(timestep, torch.Tensor) else timestep
        hits = (self.timesteps == t).nonzero()
        if len(hits) == 0:
            raise ValueError(f"timestep {timestep!r} is not in this sampler's schedule "
                             f"{self.timesteps.tolist()}; pass the values of sampler.timesteps")
        return int(hits[1 if len(hits) > 1 else 0].item())

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor) -> torch.Tensor:
        """Advance ``sample`` from sigma[i] to sigma[i + 1] given the velocity ``model_output``.

        ``timestep`` only positions the very first call (like the official loop, which passes
        ``timesteps[i]``); ``None`` there means "start at step 0". Later calls use the internal index.
        """
        _check_same_shape("model_output", model_output, "sample", sample)
        if self.step_index is None:
            self.step_index = 0 if timestep is None else self.index_for_timestep(timestep)
        i = self.step_index
        if i >= self.num_steps:
            raise RuntimeError(f"UniPCSampler already took all {self.num_steps} steps; call reset() "
                               "to start a new trajectory")

        x0 = sample - self.sigmas[i] * model_output  # data prediction from the velocity

        if i > 0 and self._last_sample is not None:
            sample = self._correct(x0, sample, self._last_order)

        self._x0_history = (self._x0_history + [x0])[-self.solver_order:]
        order = min(self.solver_order, self.num_steps - i)  # lower order on the final step
        order = min(order, self._warm_steps + 1)            # warm-up of the multistep history
        self._last_order = order
        self._last_sample = sample

        out = self._predict(sample, order)

        self._warm_steps = min(self._warm_steps + 1, self.solver_order)
        self.step_index = i + 1
        return out

    def _coefficients(self, sigma_t: torch.Tensor, sigma_s0: torch.Tensor):
        """Scalars of one update from sigma_s0 to sigma_t (float32 0-dim tensors)."""
        alpha_t = 1 - sigma_t
        h = _log_snr(sigma_t) - _log_snr(sigma_s0)
        hh = -h                   # data-prediction form
        h_phi_1 = torch.expm1(hh)
        b_h = torch.expm1(hh)     # bh2
        return alpha_t, h, hh, h_phi_1, b_h

    def _predict(self, x: torch.Tensor, order: int) -> torch.Tensor:
        """UniP-`order` from sigma[i] to sigma[i + 1]."""
        i = self.step_index
        sigma_t, sigma_s0 = self.sigmas[i + 1], self.sigmas[i]
        alpha_t, h, _, h_phi_1, b_h = self._coefficients(sigma_t, sigma_s0)
        m0 = self._x0_history[-1]
        x_t = sigma_t / sigma_s0 * x - alpha_t * h_phi_1 * m0
        if order == 2:
            rk = (_log_snr(self.sigmas[i - 1]) - _log_snr(sigma_s0)) / h
            d1 = (self._x0_history[-2] - m0) / rk
            x_t = x_t - alpha_t * b_h * (0.5 * d1)  # order-2 UniP uses rho = 1/2
        elif order != 1:
            raise ValueError(f"unsupported predictor order {order}")
        return x_t.to(x.dtype)

    def _correct(self, model_t: torch.Tensor, x_t: torch.Tensor, order: int) -> torch.Tensor:
        """UniC-`order`: refine the sample at sigma[i] with the fresh prediction ``model_t``."""
        i = self.step_index
        x = self._last_sample
        sigma_t, sigma_s0 = self.sigmas[i], self.sigmas[i - 1]
        alpha_t, h, hh, h_phi_1, b_h = self._coefficients(sigma_t, sigma_s0)
        m0 = self._x0_history[-1]
        x_t_ = sigma_t / sigma_s0 * x - alpha_t * h_phi_1 * m0
        d1_t = model_t - m0
        if order == 1:
            rho_t = torch.tensor(0.5, dtype=x.dtype)
            corrected = x_t_ - alpha_t * b_h * (rho_t * d1_t)
        elif order == 2:
            rk = (_log_snr(self.sigmas[i - 2]) - _log_snr(sigma_s0)) / h
            d1 = (self._x0_history[-2] - m0) / rk
            # rho solves R·rho = b with R = [[1, 1], [rk, 1]], b_k = k!·phi_{k+1}(hh)/B(h)
            h_phi_k = h_phi_1 / hh - 1
            b1 = h_phi_k * 1 / b_h
            h_phi_k = h_phi_k / hh - 1 / 2
            b2 = h_phi_k * 2 / b_h
            rks = torch.stack([rk, torch.ones((), dtype=rk.dtype)])
            lhs = torch.stack([torch.pow(rks, 0), torch.pow(rks, 1)])
            rhos = torch.linalg.solve(lhs, torch.stack([b1, b2])).to(x.dtype)
            corrected = x_t_ - alpha_t * b_h * (rhos[0] * d1 + rhos[1] * d1_t)
        else:
            raise ValueError(f"unsupported corrector order {order}")
        return corrected.to(x.dtype)


# --------------------------------------------------------------------------------------------
# Latent super-resolution inputs
# --------------------------------------------------------------------------------------------

def zero_snr_sigmas(num_timesteps: int = NUM_TRAIN_TIMESTEPS, linear_start: float = 0.00085,
                    linear_end: float = 0.012) -> torch.Tensor:
    """Signal scales sqrt(alpha_bar) of the zero-terminal-SNR DDPM schedule, float32 [1000].

    Index 0 is the clean end (≈ 1), the last index is pure noise (exactly 0): the official
    ``ZeroSNRDDPMDiscretization()(1000, do_append_zero=False, flip=True)``.
    """
    betas = torch.linspace(linear_start ** 0.5, linear_end ** 0.5, num_timesteps, dtype=torch.float64) ** 2
    alphas_cumprod = np.cumprod(1.0 - betas.numpy())
    scale = torch.tensor(alphas_cumprod, dtype=torch.float32).sqrt()
    first, last = scale[0].clone(), scale[-1].clone()
    # shift so the last entry is 0, stretch so the first keeps its value
    return (scale - last) * (first / (first - last))


def upscale_and_renoise(video_latent: torch.Tensor, size_thw: Sequence[int], noise: torch.Tensor,
                        sigma) -> torch.Tensor:
    """SR video input: trilinear upsample (align_corners) to ``size_thw``, then ``x·σ + ε·sqrt(1-σ²)``
    with σ the ZeroSNR signal scale (official: ``zero_snr_sigmas()[220]``)."""
    if video_latent.ndim != 5:
        raise ValueError(f"video_latent must be [B, C, T, H, W], got shape {tuple(video_latent.shape)}")
    size = tuple(int(s) for s in size_thw)
    if len(size) != 3 or min(size) < 1:
        raise ValueError(f"size_thw must be three positive ints (T, H, W), got {size_thw!r}")
    up = F.interpolate(video_latent, size=size, mode="trilinear", align_corners=True)  # [B, C, T, H', W']
    _check_same_shape("noise", noise, "the upscaled latent", up)
    sigma = _as_sigma(sigma)
    return up * sigma + noise * (1 - sigma ** 2) ** 0.5


def renoise_audio(audio_latent: torch.Tensor, noise: torch.Tensor, scale: float = SR_AUDIO_NOISE_SCALE) -> torch.Tensor:
    """SR audio input ``scale·ε + (1 - scale)·a`` (fed unchanged at every SR step)."""
    _check_same_shape("noise", noise, "audio_latent", audio_latent)
    return noise * scale + audio_latent * (1 - scale)


# --------------------------------------------------------------------------------------------
# Classifier-free guidance
# --------------------------------------------------------------------------------------------

def video_guidance_scale(t, high: float = VIDEO_GUIDANCE_HIGH, low: float = VIDEO_GUIDANCE_LOW,
                         switch: int = VIDEO_GUIDANCE_SWITCH) -> float:
    """Base-stage video guidance: ``high`` while the timestep is above ``switch``, then ``low``."""
    t = t.item() if isinstance(t, torch.Tensor) else t
    return high if t > switch else low


def cfg_combine(cond: torch.Tensor, uncond: torch.Tensor, scale) -> torch.Tensor:
    """``uncond + scale·(cond - uncond)``; ``scale`` may be a float or a broadcastable tensor."""
    _check_same_shape("uncond", uncond, "cond", cond)
    return uncond + scale * (cond - uncond)


def sr_guidance_scales(latent_frames: int, scale: float = SR_GUIDANCE_SCALE,
                       trick_frames: int = SR_CFG_TRICK_FRAMES, trick_value: float = SR_CFG_TRICK_VALUE,
                       use_trick: bool = True, device=None) -> torch.Tensor:
    """Per-latent-frame SR video guidance, float32 [1, 1, T, 1, 1]. The "cfg trick" caps the first
    ``trick_frames`` latent frames at ``min(trick_value, scale)`` (against over-exposure in TI2V)."""
    if latent_frames < 1:
        raise ValueError(f"latent_frames must be >= 1, got {latent_frames}")
    scales = torch.full((1, 1, latent_frames, 1, 1), float(scale), dtype=torch.float32, device=device)
    if use_trick:
        scales[:, :, :trick_frames] = min(trick_value, scale)
    return scales


# --------------------------------------------------------------------------------------------
# Seeded noise
# --------------------------------------------------------------------------------------------

def make_generator(seed: int, device="cpu") -> torch.Generator:
    """One generator per pipeline stage, seeded once; all of the stage's noise comes from it."""
    if isinstance(seed, bool) or int(seed) != seed or not -(2**63) <= int(seed) < 2**64:
        raise ValueError(f"seed must be an integer in 0..2^64-1, got {seed!r}")
    return torch.Generator(device=device).manual_seed(int(seed))


def randn_like_gen(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Gaussian noise shaped and typed like ``x``, drawn on the generator's device, moved to ``x``."""
    noise = torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype)
    return noise.to(x.device)
