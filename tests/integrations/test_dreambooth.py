"""DreamBooth-style LoRA fine-tuning of a tiny Stable Diffusion pipeline: four images of one
"subject" and one prompt; the adapter must lower the denoising loss on held-out noise draws, and
the result must load in diffusers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler
from diffusers_setup import UNET_TARGETS, images, sd_pipeline

import peftkit as pk
from peftkit.integrations.diffusers import save_lora_weights
from peftkit.integrations.dreambooth import _encode_images, _encode_prompt, denoising_loss, train_dreambooth_lora

pytestmark = [pytest.mark.usefixtures("torch_single_thread"), pytest.mark.filterwarnings("ignore::FutureWarning")]

SUBJECT = [np.full((8, 8, 3), colour, dtype=np.float32) for colour in ([0.9, 0.1, 0.1], [0.8, 0.2, 0.1], [0.9, 0.2, 0.2], [1.0, 0.1, 0.0])]
PROMPT = "sks dog"


@torch.no_grad()
def held_out_loss(pipe) -> float:
    """The denoising loss on the subject for fixed noise and timesteps (not those of training)."""
    latents = _encode_images(pipe, SUBJECT, torch.Generator().manual_seed(7))
    context = _encode_prompt(pipe, PROMPT).expand(len(SUBJECT), -1, -1)
    schedule, draws = DDPMScheduler.from_config(pipe.scheduler.config), torch.Generator().manual_seed(1)
    return float(np.mean([float(denoising_loss(pipe.unet, schedule, latents, context, draws)) for _ in range(8)]))


def test_dreambooth_lora_learns_the_subject_and_loads_in_diffusers(tmp_path):
    pipe = sd_pipeline()
    before = held_out_loss(pipe)
    config = pk.LoraConfig(r=4, lora_alpha=4, target_modules=[*UNET_TARGETS, "proj_in", "proj_out"])
    losses = train_dreambooth_lora(pipe, SUBJECT, PROMPT, config, steps=40, lr=5e-3, batch_size=4)
    assert len(losses) == 40 and all(np.isfinite(losses))
    assert held_out_loss(pipe) < 0.95 * before
    assert not any(p.requires_grad for n, p in pipe.unet.named_parameters() if "lora_" not in n)
    save_lora_weights(pipe, tmp_path)
    reloaded = sd_pipeline()
    reloaded.load_lora_weights(tmp_path)
    assert np.abs(images(reloaded) - images(pipe)).max() < 1e-5


def test_bad_settings_are_refused_before_anything_changes():
    pipe = sd_pipeline()
    with pytest.raises(pk.ConfigError, match="steps"):
        train_dreambooth_lora(pipe, SUBJECT, PROMPT, pk.LoraConfig(target_modules=["to_q"]), steps=0)
    with pytest.raises(pk.ConfigError, match="colour channels"):
        train_dreambooth_lora(pipe, [np.zeros((8, 8))], PROMPT, pk.LoraConfig(target_modules=["to_q"]))
    assert not any(isinstance(m, pk.AdapterLayer) for m in pipe.unet.modules())
