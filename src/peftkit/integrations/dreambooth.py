"""DreamBooth-style LoRA fine-tuning of a UNet diffusion pipeline (Stable Diffusion family): a
handful of images of one subject and one prompt ("a photo of sks dog") teach the UNet the subject.

The loop is the standard noise-prediction one: the images are encoded once by the VAE and the prompt
once by the text encoder; each step noises the latents at random timesteps (the pipeline's
scheduler as a DDPM training schedule) and regresses the UNet's prediction on its target (the noise,
or the velocity for ``v_prediction`` schedulers). Only the LoRA adapter trains. Save the result with
:func:`peftkit.integrations.diffusers.save_lora_weights`.

Example:
    >>> losses = train_dreambooth_lora(pipe, images, "a photo of sks dog",
    ...                                pk.LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]),
    ...                                steps=400, lr=1e-4)                                  # doctest: +SKIP
    >>> save_lora_weights(pipe, "out/sks-dog")                                           # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from ..config import PeftConfig
from ..errors import ConfigError
from .diffusers import add_adapter


def train_dreambooth_lora(
    pipeline: Any,
    images: Sequence[Any],
    prompt: str,
    config: PeftConfig,
    steps: int = 400,
    lr: float = 1e-4,
    batch_size: int = 1,
    seed: int = 0,
    adapter_name: str = "default",
) -> list[float]:
    """Add a ``config`` adapter to ``pipeline.unet`` and train it on ``images`` (PIL images, HxWx3
    arrays in [0, 255] or [0, 1], or 3xHxW tensors in [-1, 1]) captioned ``prompt``; returns the loss
    of every step. The pipeline's other models stay frozen; the UNet is left in eval mode.

    Example:
        >>> train_dreambooth_lora(pipe, [img1, img2, img3], "a photo of sks dog", pk.LoraConfig(r=4, target_modules=["to_q", "to_v"]))  # doctest: +SKIP
    """
    if steps < 1 or batch_size < 1 or lr <= 0:
        problems = [(k, "must be positive") for k, v in (("steps", steps), ("batch_size", batch_size), ("lr", lr)) if v <= 0]
        raise ConfigError("Invalid DreamBooth settings:", problems)
    if not images:
        raise ConfigError("Invalid DreamBooth settings:", [("images", "give at least one image of the subject")])
    unet = pipeline.unet
    generator = torch.Generator().manual_seed(seed)
    latents = _encode_images(pipeline, images, generator)
    context = _encode_prompt(pipeline, prompt)
    noise_schedule = DDPMScheduler.from_config(pipeline.scheduler.config)
    add_adapter(unet, config, adapter_name)
    trainable = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr)
    unet.train()
    losses = []
    for _ in range(steps):
        rows = torch.randint(0, latents.shape[0], (batch_size,), generator=generator)
        loss = denoising_loss(unet, noise_schedule, latents[rows], context.expand(batch_size, -1, -1), generator)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    unet.eval()
    return losses


def denoising_loss(unet: Any, schedule: Any, latents: torch.Tensor, context: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The mean squared error of the UNet's prediction for ``latents`` noised at random timesteps.

    Example:
        >>> denoising_loss(pipe.unet, DDPMScheduler.from_config(pipe.scheduler.config), latents, context, g)  # doctest: +SKIP
    """
    noise = torch.randn(latents.shape, generator=generator).to(latents)
    steps = torch.randint(0, schedule.config.num_train_timesteps, (latents.shape[0],), generator=generator)
    noisy = schedule.add_noise(latents, noise, steps)
    target = schedule.get_velocity(latents, noise, steps) if schedule.config.prediction_type == "v_prediction" else noise
    prediction = unet(noisy, steps, encoder_hidden_states=context).sample
    return F.mse_loss(prediction.float(), target.float())


@torch.no_grad()
def _encode_images(pipeline: Any, images: Sequence[Any], generator: torch.Generator) -> torch.Tensor:
    size = pipeline.unet.config.sample_size * pipeline.vae_scale_factor
    pixels = torch.stack([_pixels(image, size) for image in images]).to(pipeline.vae.device, pipeline.vae.dtype)
    encoded = pipeline.vae.encode(pixels).latent_dist.sample(generator)
    return encoded * pipeline.vae.config.scaling_factor


@torch.no_grad()
def _encode_prompt(pipeline: Any, prompt: str) -> torch.Tensor:
    tokens = pipeline.tokenizer(prompt, padding="max_length", max_length=pipeline.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt")
    return pipeline.text_encoder(tokens.input_ids.to(pipeline.text_encoder.device))[0]


def _pixels(image: Any, size: int) -> torch.Tensor:
    """One image as a 3 x size x size tensor in [-1, 1]."""
    if isinstance(image, torch.Tensor):
        tensor = image.float()
    else:
        array = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, dtype=np.float32)
        if array.ndim != 3 or array.shape[-1] != 3:
            raise ConfigError("Invalid DreamBooth images:", [("images", f"expected H x W x 3 colour channels, got shape {array.shape}")])
        array = array / 255.0 if array.max() > 1.0 else array
        tensor = torch.from_numpy(array).permute(2, 0, 1) * 2 - 1
    if tensor.ndim != 3 or tensor.shape[0] != 3:
        raise ConfigError("Invalid DreamBooth images:", [("images", f"expected 3 colour channels, got shape {tuple(tensor.shape)}")])
    return F.interpolate(tensor[None], size=(size, size), mode="bilinear", align_corners=False)[0]
