"""Tiny diffusion pipelines built from configs (random weights, no hub): Stable Diffusion with a
UNet and a CLIP text encoder, and Flux with a DiT transformer (prompt embeddings given directly)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import transformers
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))  # the tiny byte-level tokenizer
from tiny_assets import tiny_tokenizer  # noqa: E402

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
DIT_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "proj_mlp"]
TEXT_TARGETS = ["q_proj", "v_proj"]


def _vae(latent_channels: int, **extra) -> AutoencoderKL:
    return AutoencoderKL(block_out_channels=(8,), in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
                         up_block_types=("UpDecoderBlock2D",), latent_channels=latent_channels, norm_num_groups=4,
                         sample_size=8, **extra)


def sd_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """A Stable Diffusion pipeline of a few tens of thousands of parameters, same weights per seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=16, norm_num_groups=4, attention_head_dim=4,
        )
        tokenizer = tiny_tokenizer()
        tokenizer.model_max_length = 16
        text_encoder = transformers.CLIPTextModel(transformers.CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            max_position_embeddings=16, projection_dim=16, eos_token_id=tokenizer.eos_token_id,
        ))
        vae = _vae(4)
    scheduler = DDIMScheduler(steps_offset=1, clip_sample=False)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def flux_pipeline(seed: int = 0) -> FluxPipeline:
    """A Flux pipeline with a one-block DiT transformer and no text encoders (prompt embeddings are given)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
                                             attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                                             pooled_projection_dim=16, axes_dims_rope=[2, 2, 4])
        vae = _vae(1, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.06, scaling_factor=1.5)
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=None, tokenizer=None,
                        text_encoder_2=None, tokenizer_2=None, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def images(pipe, **extra) -> np.ndarray:
    """The pipeline's output for a fixed prompt and seed (2 denoising steps, 8x8 pixels)."""
    generator = torch.Generator().manual_seed(0)
    common = dict(num_inference_steps=2, height=8, width=8, output_type="np", generator=generator, **extra)
    if isinstance(pipe, FluxPipeline):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1)
            prompt = dict(prompt_embeds=torch.randn(1, 4, 16), pooled_prompt_embeds=torch.randn(1, 16))
        return pipe(**prompt, **common).images
    return pipe("sks dog", **common).images


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int = 0, std: float = 0.2) -> None:
    """Give every LoRA tensor trained-like values (lora_B starts at zero)."""
    generator = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters()):
        if "lora_" in name:
            p.copy_(torch.randn(p.shape, generator=generator) * std)
