"""The TRL runs that tests/integrations/test_trl.py compares: tiny Llama, tiny datasets, one
trainer per task, for either library. Imports no ``peft``, so a process without it can use it."""

from __future__ import annotations

import sys
from pathlib import Path

import datasets
import torch
import transformers
import trl

from peftkit.integrations import trl as pk_trl

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))  # the tiny tokenizer
from tiny_assets import tiny_tokenizer  # noqa: E402

TOKENIZER = tiny_tokenizer()
DATA = {
    "sft": [{"text": f"the number {i} is {'even' if i % 2 == 0 else 'odd'}"} for i in range(8)],
    "dpo": [{"prompt": f"Is {i} even?", "chosen": f" {'yes' if i % 2 == 0 else 'no'}", "rejected": " maybe"} for i in range(8)],
    "grpo": [{"prompt": f"Count to {i}:"} for i in range(8)],
}
DATA["rloo"] = DATA["grpo"]
# the trainer class and config in each library's setup, and the extra settings of each task
TRAINERS = {"sft": "SFTTrainer", "dpo": "DPOTrainer", "grpo": "GRPOTrainer", "rloo": "RLOOTrainer"}
CONFIGS = {"sft": trl.SFTConfig, "dpo": trl.DPOConfig, "grpo": trl.GRPOConfig, "rloo": trl.RLOOConfig}
ONLINE = dict(num_generations=4, max_completion_length=6, beta=0.1)
EXTRA = {"sft": {}, "dpo": {}, "grpo": ONLINE, "rloo": ONLINE}
LOGGED = ("loss", "grad_norm", "kl", "reward", "rewards/margins")


def digits_reward(completions: list[str], **_) -> list[float]:
    """A tiny reward for the online methods: the share of digits in the completion."""
    return [sum(ch.isdigit() for ch in text) / max(len(text), 1) for text in completions]


def base_model() -> transformers.LlamaForCausalLM:
    config = transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=len(TOKENIZER), max_position_embeddings=128, eos_token_id=TOKENIZER.eos_token_id,
        pad_token_id=TOKENIZER.pad_token_id, bos_token_id=None,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return transformers.LlamaForCausalLM(config)


def trainer_for(task: str, lib, out: Path, model=None, steps: int = 3, **config_extra):
    """The ``task`` trainer of ``lib`` (peftkit's integration or TRL itself for peft) on a fresh
    tiny model with a LoRA ``peft_config`` from that library, or on ``model`` if given."""
    cls = getattr(pk_trl if lib.__name__ == "peftkit" else trl, TRAINERS[task])
    args = CONFIGS[task](
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=4, learning_rate=5e-3, seed=0,
        report_to=[], use_cpu=True, bf16=False, disable_tqdm=True, logging_steps=1, save_strategy="no",
        **{**EXTRA[task], **config_extra},
    )
    kwargs = dict(args=args, train_dataset=datasets.Dataset.from_list(DATA[task]), processing_class=TOKENIZER)
    if task in ("grpo", "rloo"):
        kwargs["reward_funcs"] = digits_reward
    if model is None:
        kwargs["peft_config"] = lib.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
        model = base_model()
    return cls(model=model, **kwargs)


def logged(trainer) -> dict[str, list[float]]:
    history = [h for h in trainer.state.log_history if "loss" in h]
    return {key: [h[key] for h in history] for key in LOGGED if key in history[0]}
