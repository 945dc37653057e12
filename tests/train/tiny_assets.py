"""A tiny local model folder (Llama-shaped, byte-level tokenizer with a ChatML template) and small
task files, so `peftkit train` runs end to end in seconds without any hub."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tiny_tokenizer(template: str | None = CHATML, pad: bool = True) -> PreTrainedTokenizerFast:
    """Byte-level BPE without merges: every byte is a token, so decode(encode(s)) == s.
    ``pad=False`` leaves the pad token unset (to test code that must supply one)."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    core = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>",
                                  pad_token="<|im_end|>" if pad else None,
                                  additional_special_tokens=["<|im_start|>"])
    tok.chat_template = template
    return tok


def tiny_model_dir(root: Path) -> Path:
    """Save a random tiny Llama and its tokenizer as a normal from_pretrained folder."""
    path = root / "tiny-llama"
    if path.exists():
        return path
    tok = tiny_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=256,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None,
                      initializer_range=0.2)  # frozen LM head with room for confident logits
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def chat_rows(n: int, offset: int = 0) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"Echo {i}"}, {"role": "assistant", "content": f"{i}!"}]}
            for i in range(offset, offset + n)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_config(root: Path, **sections) -> Path:
    """A valid sft run config on the tiny model; ``sections`` override whole sections' keys."""
    model_dir = tiny_model_dir(root)
    train = write_jsonl(root / "train.jsonl", chat_rows(12))
    evaluation = write_jsonl(root / "eval.jsonl", chat_rows(4, offset=100))
    cfg = {
        "model": {"name": str(model_dir)},
        "adapter": {"method": "lora", "r": 4, "lora_alpha": 8, "lora_dropout": 0.1, "target_modules": "all-linear"},
        "data": {"train": str(train), "eval": str(evaluation), "format": "chat"},
        "train": {"task": "sft", "max_steps": 6, "batch_size": 4, "lr": 5e-3, "save_steps": 2, "eval_steps": 3,
                  "max_seq_len": 64, "seed": 0},
        "eval": {"metrics": ["loss", "exact_match"], "max_new_tokens": 4},
        "output": {"dir": str(root / "runs")},
    }
    for name, values in sections.items():
        cfg[name] = {**cfg.get(name, {}), **values}
    path = root / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def tiny_bert_dir(root: Path) -> Path:
    """A random tiny BERT encoder (no classification head: loading it for SEQ_CLS adds a new one)
    with the byte-level tokenizer, as a from_pretrained folder."""
    from transformers import BertConfig, BertModel

    path = root / "tiny-bert"
    if path.exists():
        return path
    tok = tiny_tokenizer()
    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                     vocab_size=len(tok), max_position_embeddings=128, pad_token_id=tok.pad_token_id)
    BertModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def the_run(root: Path, name: str | None = None) -> Path:
    """The one run folder under ``root/runs`` (whose name contains ``name``, if given)."""
    found = [p for p in sorted((root / "runs").iterdir()) if p.is_dir() and (name is None or name in p.name)]
    assert len(found) == 1, found
    return found[0]


def assert_loads_in_peftkit_and_peft(adapter: Path, make_base, inputs: dict) -> torch.Tensor:
    """Load ``adapter`` onto two fresh bases (``make_base()``), one with peftkit and one with the real
    ``peft``; both must give the same outputs for ``inputs``. Returns peftkit's logits."""
    import peft

    import peftkit as pk

    ours = pk.PeftModel.from_pretrained(make_base(), adapter).eval()
    theirs = peft.PeftModel.from_pretrained(make_base(), adapter).eval()
    with torch.no_grad():
        got, expected = ours(**inputs).logits, theirs(**inputs).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    return got
