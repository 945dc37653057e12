"""diffusers 0.42 with peftkit LoRA, beside real ``peft`` (diffusers' own LoRA backend): a tiny
Stable Diffusion pipeline (UNet + CLIP text encoder) and a tiny Flux pipeline (DiT transformer)."""

from __future__ import annotations

import numpy as np
import peft
import pytest
import torch
from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_kohya
from diffusers_setup import DIT_TARGETS, TEXT_TARGETS, UNET_TARGETS, flux_pipeline, images, randomize, sd_pipeline
from safetensors import safe_open

import peftkit as pk
from peftkit.integrations import diffusers as pkd

pytestmark = [
    pytest.mark.usefixtures("torch_single_thread"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
]
PIPELINES = {"unet": (sd_pipeline, UNET_TARGETS), "transformer": (flux_pipeline, DIT_TARGETS)}


def close(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.abs(a - b).max() < 1e-5)


def adapted(component: str, lib=pk, r: int = 4, alpha: int = 8, adapter_name: str = "default"):
    """A pipeline whose ``component`` holds a LoRA adapter with trained-like weights, from ``lib``."""
    make, targets = PIPELINES[component]
    pipe = make()
    model = getattr(pipe, component)
    if lib is pk:
        pkd.add_adapter(model, pk.LoraConfig(r=r, lora_alpha=alpha, target_modules=targets), adapter_name)
    else:
        model.add_adapter(peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=targets), adapter_name)
    randomize(model)
    return pipe


@pytest.mark.parametrize("component", ["unet", "transformer"])
def test_saved_in_diffusers_format_loads_with_load_lora_weights(component, tmp_path):
    pipe = adapted(component)
    want = images(pipe)
    assert not close(want, images(PIPELINES[component][0]()))  # the adapter changes the output
    pkd.save_lora_weights(pipe, tmp_path)
    with safe_open(tmp_path / "pytorch_lora_weights.safetensors", "pt") as f:
        assert all(k.startswith(f"{component}.") for k in f.keys()) and "lora_adapter_metadata" in f.metadata()
    theirs = PIPELINES[component][0]()
    theirs.load_lora_weights(tmp_path)  # diffusers + peft
    assert close(images(theirs), want)
    ours = PIPELINES[component][0]()
    assert pkd.load_lora_weights(ours, tmp_path) == [component]
    assert close(images(ours), want)


@pytest.mark.parametrize("component", ["unet", "transformer"])
def test_diffusers_files_written_with_peft_load_into_peftkit(component, tmp_path):
    theirs = adapted(component, lib=peft, r=4, alpha=4)
    want = images(theirs)
    layers = peft.get_peft_model_state_dict(getattr(theirs, component))
    # the training scripts' form: diffusers' older key names, no metadata (alpha = rank)
    type(theirs).save_lora_weights(tmp_path / "plain", **{f"{component}_lora_layers": convert_state_dict_to_diffusers(layers)})
    # save_lora_adapter's form: peft names, the config as metadata
    getattr(theirs, component).save_lora_adapter(tmp_path / "adapter", adapter_name="default")
    for folder, prefix in (("plain", component), ("adapter", None)):
        ours = PIPELINES[component][0]()
        if prefix:
            pkd.load_lora_weights(ours, tmp_path / folder)
        else:
            path = tmp_path / folder / "pytorch_lora_weights.safetensors"
            with safe_open(path, "pt") as f:
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            pkd.load_lora_adapter(getattr(ours, component), tensors, metadata=None)
        assert close(images(ours), want), folder


def test_kohya_files_load_as_diffusers_loads_them(tmp_path):
    theirs = adapted("unet", lib=peft, r=4, alpha=4)
    unet_layers = peft.get_peft_model_state_dict(theirs.unet)
    kohya = convert_state_dict_to_kohya({f"unet.{k}": v for k, v in unet_layers.items()})
    assert all(k.startswith("lora_unet_") for k in kohya)
    kohya = {k: torch.tensor(8.0) if k.endswith(".alpha") else v for k, v in kohya.items()}  # alpha 8 over rank 4
    from safetensors.torch import save_file

    save_file(kohya, tmp_path / "kohya.safetensors")
    reference, ours = sd_pipeline(), sd_pipeline()
    reference.load_lora_weights(tmp_path, weight_name="kohya.safetensors")
    pkd.load_lora_weights(ours, tmp_path, weight_name="kohya.safetensors")
    assert close(images(ours), images(reference))


def test_text_encoder_adapters_travel_with_the_unet_s(tmp_path):
    pipe = adapted("unet")
    pkd.add_adapter(pipe.text_encoder, pk.LoraConfig(r=2, lora_alpha=4, target_modules=TEXT_TARGETS))
    randomize(pipe.text_encoder, seed=1)
    want = images(pipe)
    pkd.save_lora_weights(pipe, tmp_path)
    theirs, ours = sd_pipeline(), sd_pipeline()
    theirs.load_lora_weights(tmp_path)
    assert sorted(pkd.load_lora_weights(ours, tmp_path)) == ["text_encoder", "unet"]
    assert close(images(theirs), want) and close(images(ours), want)


@pytest.mark.parametrize("component", ["unet", "transformer"])
def test_diffusers_lora_methods_act_on_peftkit_layers_as_on_peft_s(component):
    """disable/enable, set_adapters weights, per-call scale, fuse/unfuse, delete, unload: each
    compared with the same call on the same adapter loaded by diffusers with peft."""
    ours, theirs = adapted(component), adapted(component, lib=peft)
    getattr(theirs, component).load_state_dict(getattr(ours, component).state_dict())
    base, full = images(PIPELINES[component][0]()), images(ours)
    assert close(images(theirs), full)
    for pipe in (ours, theirs):
        pipe.disable_lora()
        assert close(images(pipe), base)
        pipe.enable_lora()
        pipe.set_adapters(["default"], [0.5])
    half = images(theirs)
    assert close(images(ours), half) and not close(half, full)
    for pipe in (ours, theirs):
        pipe.set_adapters(["default"], [1.0])
        pipe.fuse_lora(components=[component], lora_scale=0.5)
        assert close(images(pipe), half)
        assert getattr(pipe, component).peft_config and pipe._merged_adapters == {"default"}
        pipe.unfuse_lora(components=[component])
        assert not any(getattr(m, "merged", False) for m in getattr(pipe, component).modules())
    scale = {"cross_attention_kwargs": {"scale": 0.3}} if component == "unet" else {"joint_attention_kwargs": {"scale": 0.3}}
    assert close(images(ours, **scale), images(theirs, **scale))
    for pipe in (ours, theirs):
        pipe.unload_lora_weights()
        assert close(images(pipe), base)
        assert not any(isinstance(m, pk.AdapterLayer) for m in getattr(pipe, component).modules())


def test_two_adapters_switch_and_combine_as_with_peft():
    ours, theirs = adapted("unet"), adapted("unet", lib=peft)
    for pipe, lib in ((ours, pk), (theirs, peft)):
        config = lib.LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_v"])
        (pkd.add_adapter(pipe.unet, config, "b") if lib is pk else pipe.unet.add_adapter(config, "b"))
    randomize(ours.unet, seed=3)
    theirs.unet.load_state_dict(ours.unet.state_dict())
    for names, weights in ((["b"], [1.0]), (["default", "b"], [0.7, 0.4])):
        ours.set_adapters(names, weights)
        theirs.set_adapters(names, weights)
        assert close(images(ours), images(theirs)), names
    assert ours.get_active_adapters() == theirs.get_active_adapters() == ["default", "b"]
    ours.delete_adapters("b")
    theirs.delete_adapters("b")
    assert list(ours.unet.peft_config) == list(theirs.unet.peft_config) == ["default"]


def test_a_peft_model_component_saves_too(tmp_path):
    pipe = sd_pipeline()
    pipe.unet = pk.get_peft_model(pipe.unet, pk.LoraConfig(r=4, target_modules=UNET_TARGETS))
    with pytest.raises(pk.AdapterError, match="holds no peftkit adapter"):
        pkd.lora_layers(sd_pipeline().unet)
    layers, metadata = pkd.lora_layers(pipe.unet)
    assert all(not k.startswith("base_model") for k in layers) and metadata["r"] == 4


def test_bad_files_leave_the_pipeline_unchanged(tmp_path):
    pipe = adapted("unet")
    pkd.save_lora_weights(pipe, tmp_path)
    other = sd_pipeline()
    other.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q = torch.nn.Linear(8, 3)  # does not fit
    with pytest.raises(pk.CheckpointError):
        pkd.load_lora_weights(other, tmp_path)
    assert not hasattr(other.unet, "peft_config") or not other.unet.peft_config
    assert not any(isinstance(m, pk.AdapterLayer) for m in other.unet.modules())
    with pytest.raises(pk.AdapterError, match="no LoRA-loadable component"):
        pkd.save_lora_weights(sd_pipeline(), tmp_path / "none")
