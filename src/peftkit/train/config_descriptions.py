"""What each run-config key means, in words: the text of the reference that the schema cannot say
(:mod:`peftkit.train.config_reference` adds types, defaults and allowed values from the schema).
A key of a run-config section without an entry here fails a test."""

from __future__ import annotations

from typing import Optional

SECTION_TEXT = {
    "model": "The base model: a bundled name (`smollm2-135m-instruct`, `minilm-l6`), a Hugging Face id or a local folder.",
    "adapter": "The adapter: `method` plus the method's own config keys (the same names and defaults as `peft`).",
    "data": "Where the examples are and how each row is laid out (see the format table above).",
    "train": "The optimisation: task, length, batch, optimiser, schedule, precision, checkpoints.",
    "eval": "What is measured on the evaluation data, during training and at its last step.",
    "output": "Where the run folder goes: `<dir>/<time>-<name or method>-<config hash>/`.",
    "tracking": "Where metrics go besides the run folder's `metrics.jsonl` (always written).",
}

DESCRIPTIONS = {
    # model
    "model.name": "Bundled model name, Hugging Face id (needs the hub or its cache) or local `from_pretrained` folder.",
    "model.dtype": "Dtype the base weights are loaded in; `auto` keeps the checkpoint's own.",
    "model.task_type": "Model class to load (`CAUSAL_LM` -> AutoModelForCausalLM, `SEQ_CLS` -> a classifier); "
                       "leave it out: `train.task` picks it.",
    "model.revision": "Git revision (branch, tag or commit) of a hub model.",
    "model.quantization": "Hold the frozen base quantized (QLoRA): `{backend: bnb, bits: 4, quant_type: nf4, "
                          "double_quant: true, compute_dtype: float32}`, bitsandbytes 8-bit (`bits: 8`) or torchao "
                          "int8 weight-only (`backend: torchao, bits: 8`); `skip_modules` stay unquantized. "
                          "Needs `pip install 'peftkit[quantization]'`; see docs/quantization.md.",
    # adapter (run keys and common method keys)
    "adapter.method": "Which PEFT method: `lora` (DoRA with `use_dora: true`), `ia3`, `adalora`, `prompt_tuning`... "
                      "Case and `-`/`_` do not matter.",
    "adapter.from": "Start from another run's adapter (a run folder, run id or adapter folder) instead of a fresh "
                    "one; that run becomes this run's parent.",
    "adapter.r": "Rank of the low-rank update (LoRA: A is r x in, B is out x r). 8-64 is usual.",
    "adapter.lora_alpha": "Scale numerator: the update is multiplied by lora_alpha / r (lora_alpha / sqrt(r) "
                          "with use_rslora). Often 2 x r.",
    "adapter.lora_dropout": "Dropout on the adapter's input, in [0, 1).",
    "adapter.target_modules": "Which modules to adapt: a list of names or name suffixes (`[q_proj, v_proj]`), "
                              "`all-linear`, or a regex string. `peftkit inspect MODEL` lists the names.",
    "adapter.exclude_modules": "Modules never adapted, even when target_modules matches them (names or a regex).",
    "adapter.modules_to_save": "Modules trained in full and saved with the adapter (a classifier's head is added "
                               "for you).",
    "adapter.layers_to_transform": "Only these layer indices of the stack (one integer or a list); unset: all.",
    "adapter.layers_pattern": "Name of the layer list that layers_to_transform counts in (e.g. `layers`); "
                              "found by itself for usual models.",
    "adapter.bias": "Which biases train: `none`, `all`, or `lora_only` (those of adapted layers).",
    "adapter.use_rslora": "Scale by lora_alpha / sqrt(r) (rank-stabilised LoRA) instead of lora_alpha / r.",
    "adapter.use_dora": "DoRA: learn a magnitude per output unit beside A and B.",
    "adapter.init_lora_weights": "`true` (B = 0: starts as the base model), `gaussian`, `pissa`, `olora`, or "
                                 "`false` (random, for tests).",
    "adapter.fan_in_fan_out": "The base weight is stored (in, out), as in GPT-2's Conv1D; set for you there.",
    "adapter.rank_pattern": "Per-module ranks overriding r: `{regex or name: rank}`.",
    "adapter.alpha_pattern": "Per-module lora_alpha overriding it: `{regex or name: alpha}`.",
    "adapter.lora_bias": "Give lora_B a trainable bias (saved as `lora_B.bias`; merged into the base layer's bias).",
    "adapter.ensure_weight_tying": "With tied input embedding and LM head (`tie_word_embeddings`), give both one "
                                   "shared adapter when embed_tokens or lm_head is in target_modules or modules_to_save.",
    "adapter.target_parameters": "Parameters to adapt directly, e.g. MoE expert weights "
                                 "`[mlp.experts.gate_up_proj, mlp.experts.down_proj]` (full names or dotted tails).",
    # data
    "data.train": "Training rows: a .jsonl/.json/.csv/.parquet file, a saved dataset folder, or a hub dataset id.",
    "data.eval": "Evaluation rows in the same format (optional; see eval_fraction).",
    "data.format": "How each row is laid out; must fit `train.task` (table above). Left out, it is filled "
                   "in where the task reads one format (classification, dpo).",
    "data.text_field": "Field holding the text of a `classification` row.",
    "data.label_field": "Field holding the label of a `classification` row (a string or an integer).",
    "data.eval_fraction": "Hold out this share of data.train for evaluation (seeded by train.seed) when "
                          "data.eval is unset.",
    # train
    "train.task": "What is learned: `sft` (next-token loss on the answers), `classification` (a label per "
                  "text), `dpo` (preference pairs).",
    "train.epochs": "Passes over the training rows (ignored when max_steps is set).",
    "train.max_steps": "Optimizer steps to run; overrides epochs.",
    "train.batch_size": "Rows per micro-batch (per process).",
    "train.grad_accum": "Micro-batches per optimizer step (effective batch = batch_size x grad_accum x processes).",
    "train.lr": "Peak learning rate of AdamW. LoRA usually wants 1e-4 to 2e-3.",
    "train.weight_decay": "AdamW weight decay.",
    "train.scheduler": "Learning-rate schedule after warmup.",
    "train.warmup_steps": "Steps of linear warmup from 0 to lr.",
    "train.max_seq_len": "Tokens per row; longer rows are cut (truncation: warn) or refused (truncation: error).",
    "train.truncation": "`warn`: cut rows over max_seq_len and say how many; `error`: refuse them, naming the row.",
    "train.completion_only": "Loss on the answers only (chat, prompt_completion), not on the prompts.",
    "train.packing": "Pack several short rows into one max_seq_len sequence (sft only).",
    "train.save_steps": "Checkpoint every N steps; the last step is always checkpointed.",
    "train.eval_steps": "Evaluate every N steps; the last step is always evaluated.",
    "train.logging_steps": "Log loss, learning rate and tokens/s every N steps.",
    "train.seed": "Seed of data order, dropout, initialisation and a new classifier head.",
    "train.gradient_checkpointing": "Recompute activations in backward: less memory, ~30% slower.",
    "train.optimizer": "`adamw` (torch), `adamw_8bit` (bitsandbytes 8-bit states), `paged_adamw` / "
                       "`paged_adamw_8bit` (bitsandbytes, GPU only) or `adafactor` (transformers').",
    "train.mixed_precision": "`bf16` or `fp16` autocast (on GPU); `no` computes in model.dtype.",
    "train.max_grad_norm": "Clip the gradient norm to this; null turns clipping off.",
    "train.dpo_beta": "DPO's beta: how far the policy may move from the base model.",
    # eval
    "eval.metrics": "`loss` (all tasks), `exact_match` (sft: generated answer == reference), `accuracy` and "
                    "`f1` (classification). The first that is not the loss is the run's headline metric.",
    "eval.max_new_tokens": "Tokens generated per answer for exact_match.",
    "eval.num_examples": "Score only the first N evaluation rows.",
    "eval.at_start": "Also score the base model before the first step, so the run shows before and after.",
    # output
    "output.dir": "Folder of run folders (relative to the current directory).",
    "output.name": "Readable part of the run folder's name (default: the method).",
    # tracking
    "tracking.backends": "`local` (metrics.jsonl, always), `tensorboard`, `mlflow`, `wandb` (through accelerate).",
    "tracking.project": "Experiment (mlflow) or project (wandb) name.",
    "tracking.mlflow_uri": "MLflow tracking URI; default a file store in `<output.dir>/mlruns`.",
    # formats (the format table)
    "format.chat": "`messages`: a list of `{role, content}`; the last (assistant) turn is the answer",
    "format.prompt_completion": "`prompt` and `completion` strings",
    "format.text": "`text` (plain language-model training, no prompt)",
    "format.classification": "`text` and `label` (names set by text_field / label_field)",
    "format.preference": "`prompt`, `chosen` and `rejected` strings",
    "format.seq2seq": "`source` and `target` strings",
    "format.token_classification": "`tokens` (a list of words) and `tags` (one tag per word)",
    "format.speech": "an audio file path (wav/flac, relative to the data file) and its transcript",
    "format.vision_chat": "image paths and `messages`; the last assistant turn is the answer",
}

EXAMPLE = """
model:   {name: smollm2-135m-instruct, dtype: float32}
adapter: {method: lora, r: 16, lora_alpha: 32, lora_dropout: 0.0, target_modules: all-linear}
data:
  train: examples/data/contacts/train.jsonl
  eval: examples/data/contacts/eval.jsonl
  format: chat
train:   {task: sft, max_steps: 30, batch_size: 8, lr: 2.0e-3, scheduler: constant, save_steps: 15, eval_steps: 30}
eval:    {metrics: [exact_match, loss], max_new_tokens: 40, at_start: true}
output:  {dir: runs, name: quickstart}
"""

# The fields of a row of each data format, for the error that asks for data.format.
FORMAT_FIELDS = {"chat": "rows with messages", "prompt_completion": "rows with prompt and completion",
                 "text": "rows with text", "classification": "rows with text and label",
                 "preference": "rows with prompt, chosen and rejected"}


def run_owned_message(key: str, value: str, task: Optional[str], task_types: dict[str, str]) -> str:
    """Why an adapter key that the run fills (``value`` as written) is refused, and what to write instead."""
    if key == "task_type":
        tasks = ", ".join(f"{t} -> {tt}" for t, tt in task_types.items())
        return (f"{value} does not fit train.task {task!r}; the run sets the adapter's task_type from "
                f"train.task ({tasks}): remove adapter.task_type, or change train.task (model.task_type picks "
                "another model class)")
    where = {"base_model_name_or_path": "model.name", "revision": "model.revision"}.get(key)
    return ("filled in by the run; remove it" + (f" and set {where} instead" if where else "")
            + " (the saved adapter_config.json carries it)")
