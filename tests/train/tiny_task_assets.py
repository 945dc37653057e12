"""Tiny local model folders and data files for the tasks beyond causal LMs (seq2seq, token
classification, speech to text): random weights from transformers config classes and the byte-level
tokenizer of tiny_assets, saved as from_pretrained folders, so `peftkit train` runs them in seconds."""

from __future__ import annotations

import math
import struct
import wave
from pathlib import Path

import pytest
import torch
import yaml
from tiny_assets import tiny_bert_dir, tiny_tokenizer, write_jsonl

SPEECH_RATE = 16000
# The `tasks` extra: the tasks' scorers and the audio reader.
TASK_EXTRAS = ("sacrebleu", "rouge_score", "seqeval", "jiwer", "soundfile")


def skip_without_task_extras() -> None:
    """Skip the calling test module where the `tasks` extra is not installed."""
    for module in TASK_EXTRAS:
        pytest.importorskip(module)


def tiny_t5_dir(root: Path) -> Path:
    """A random two-layer T5 whose pad token (the decoder's start) and eos are the tokenizer's."""
    from transformers import T5Config, T5ForConditionalGeneration

    path = root / "tiny-t5"
    if path.exists():
        return path
    tok = tiny_tokenizer(template=None)
    tok.add_special_tokens({"pad_token": "<pad>"})
    torch.manual_seed(0)
    cfg = T5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                   pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                   decoder_start_token_id=tok.pad_token_id)
    T5ForConditionalGeneration(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def tiny_whisper_dir(root: Path) -> Path:
    """A random one-layer Whisper reading one-second clips (100 feature frames) at 16 kHz."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    path = root / "tiny-whisper"
    if path.exists():
        return path
    tok = tiny_tokenizer(template=None)
    tok.add_special_tokens({"pad_token": "<pad>", "additional_special_tokens": ["<|startoftranscript|>"]})
    start = tok.convert_tokens_to_ids("<|startoftranscript|>")
    torch.manual_seed(0)
    cfg = WhisperConfig(vocab_size=len(tok), d_model=32, encoder_layers=1, decoder_layers=1,
                        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                        decoder_ffn_dim=64, num_mel_bins=16, max_source_positions=50, max_target_positions=64,
                        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=start,
                        decoder_start_token_id=start, begin_suppress_tokens=None, suppress_tokens=None)
    WhisperForConditionalGeneration(cfg).save_pretrained(path)
    WhisperFeatureExtractor(feature_size=16, sampling_rate=SPEECH_RATE, chunk_length=1).save_pretrained(path)
    tok.save_pretrained(path)
    return path


VLM_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}"
                "{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
                "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tiny_llava_dir(root: Path) -> Path:
    """A random LLaVA (a one-layer CLIP vision tower on 32x32 images, 4 image tokens, and a two-layer
    Llama) with its processor: image processor, byte-level tokenizer with <image>, chat template."""
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    path = root / "tiny-llava"
    if path.exists():
        return path
    tok = tiny_tokenizer(template=VLM_TEMPLATE)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<image>"]})
    torch.manual_seed(0)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                              image_size=32, patch_size=16, projection_dim=32)
    text = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=256,
                       eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None)
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids("<image>"),
                      vision_feature_layer=-1)
    LlavaForConditionalGeneration(cfg).save_pretrained(path)
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    LlavaProcessor(image_processor=images, tokenizer=tok, patch_size=16, vision_feature_select_strategy="default",
                   chat_template=VLM_TEMPLATE, num_additional_image_tokens=1).save_pretrained(path)
    return path


def color_rows(folder: Path, n: int, offset: int = 0) -> list[dict]:
    """Rows asking for the colour of a plain image; image paths relative to ``folder``."""
    from PIL import Image

    (folder / "images").mkdir(exist_ok=True)
    colors = {"red": (220, 20, 20), "blue": (20, 20, 220)}
    rows = []
    for i in range(offset, offset + n):
        name = ("red", "blue")[i % 2]
        Image.new("RGB", (40, 40), colors[name]).save(folder / "images" / f"{i}.png")
        rows.append({"images": [f"images/{i}.png"], "messages": [
            {"role": "user", "content": "Which colour is this?"}, {"role": "assistant", "content": name}]})
    return rows


def tone_wav(path: Path, hertz: float, seconds: float = 0.5, rate: int = SPEECH_RATE) -> Path:
    """A sine tone as a 16-bit mono wav file (written with the standard library)."""
    n = int(seconds * rate)
    samples = (int(12000 * math.sin(2 * math.pi * hertz * i / rate)) for i in range(n))
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1), f.setsampwidth(2), f.setframerate(rate)
        f.writeframes(b"".join(struct.pack("<h", s) for s in samples))
    return path


def seq2seq_rows(n: int, offset: int = 0) -> list[dict]:
    return [{"source": f"repeat: {i}", "target": f"{i}"} for i in range(offset, offset + n)]


def ner_rows(n: int, offset: int = 0) -> list[dict]:
    names, places = ["Ada", "Alan", "Grace", "Linus"], ["Paris", "Oslo", "Rome", "Lima"]
    rows = []
    for i in range(offset, offset + n):
        tokens = [names[i % 4], "visited", places[(i // 4) % 4], "today"]
        rows.append({"tokens": tokens, "tags": ["B-PER", "O", "B-LOC", "O"]})
    return rows


def speech_rows(folder: Path, n: int, offset: int = 0) -> list[dict]:
    """Rows whose transcript names the tone's pitch; audio paths relative to ``folder``."""
    (folder / "clips").mkdir(exist_ok=True)
    rows = []
    for i in range(offset, offset + n):
        word = ("low", "high")[i % 2]
        tone_wav(folder / "clips" / f"{i}.wav", 220 if word == "low" else 1760)
        rows.append({"audio": f"clips/{i}.wav", "text": word})
    return rows


def write_task_config(root: Path, task: str, **sections) -> Path:
    """A valid run config for ``task`` on its tiny model, with train/eval files beside it."""
    model, fmt, rows, metrics = {
        "seq2seq": (tiny_t5_dir, "seq2seq", seq2seq_rows, ["loss", "exact_match", "bleu", "chrf", "rougeL"]),
        "token_classification": (tiny_bert_dir, "token_classification", ner_rows, ["loss", "accuracy", "f1"]),
        "speech_to_text": (tiny_whisper_dir, "speech", speech_rows, ["loss", "wer"]),
        "vision_sft": (tiny_llava_dir, "vision_chat", color_rows, ["loss", "exact_match"]),
    }[task]
    make = (lambda n, offset=0: rows(root, n, offset)) if rows in (speech_rows, color_rows) else rows
    cfg = {
        "model": {"name": str(model(root))},
        "adapter": {"method": "lora", "r": 4, "lora_alpha": 8, "target_modules": "all-linear"},
        "data": {"train": str(write_jsonl(root / "train.jsonl", make(8))),
                 "eval": str(write_jsonl(root / "eval.jsonl", make(4, 100))), "format": fmt},
        "train": {"task": task, "max_steps": 4, "batch_size": 4, "lr": 5e-3, "save_steps": 2, "eval_steps": 4,
                  "max_seq_len": 64, "seed": 0},
        "eval": {"metrics": metrics, "max_new_tokens": 4},
        "output": {"dir": str(root / "runs")},
    }
    for name, values in sections.items():
        cfg[name] = {**cfg.get(name, {}), **values}
    path = root / f"{task}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


__all__ = ["tiny_t5_dir", "tiny_whisper_dir", "tiny_llava_dir", "tone_wav", "write_task_config"]
