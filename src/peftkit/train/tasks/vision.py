"""``vision_sft``: images + chat with a vision-language model (LLaVA-style, ``AutoModelForImageTextToText``).
Rows are ``{"images": ["cat.png"], "messages": [...]}``: the images (paths relative to the data file)
go in front of the first user turn's text, the processor's chat template renders the conversation and
the loss is on the last assistant turn's tokens. By default the adapter goes on the language model
only: the run config's resolved adapter says so in ``exclude_modules`` (see :data:`VISION_PARTS`).
Evaluation generates the last assistant turn greedily and scores exact match.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import torch

from .. import data
from .base import ModelTask, device_of, unwrap
from .catalog import TASK_INFO
from .metrics import text_scores

# The vision encoder and its projector in the VLMs transformers ships (LLaVA, Idefics, Qwen-VL...):
# the adapter's default exclude_modules (set in the task catalog), a regex matched against whole names.
VISION_PARTS = dict(TASK_INFO["vision_sft"].adapter_defaults)["exclude_modules"]


def _conversation(row: dict) -> list[dict]:
    """The row's messages with its images as content parts in front of the first user turn."""
    out, placed = [], False
    for m in row["messages"]:
        parts = [{"type": "text", "text": m["content"]}]
        if m["role"] == "user" and not placed:
            parts = [{"type": "image"} for _ in row["images"]] + parts
            placed = True
        out.append({"role": m["role"], "content": parts})
    return out


class VisionSftTask(ModelTask):
    """Image + chat rows for ``AutoModelForImageTextToText`` with the model's own processor.

    Example:
        >>> examples, _ = VisionSftTask().examples(cfg, rows, processor, "captions.jsonl")  # doctest: +SKIP
        >>> sorted(examples[0])
        ['input_ids', 'labels', 'pixel_values', 'prompt_length']
    """

    name = "vision_sft"

    def validate_rows(self, rows: Any, cfg: Any, source: str) -> None:
        data.validate_rows(rows, "chat", source)  # the messages, as for sft
        bad = [(i, "images", f"field 'images' is {data._describe(v)} (expected a non-empty list of image paths)")
               for i, v in enumerate(rows["images"] if "images" in rows.column_names else [None] * len(rows))
               if not (isinstance(v, list) and v and all(isinstance(p, str) for p in v))]
        if bad:
            data._fail(source, bad, "vision_chat rows")

    def load_processor(self, cfg: Any) -> Any:
        from transformers import AutoProcessor

        from ...models import resolve_model

        kwargs = {"revision": cfg.model.revision} if cfg.model.revision else {}
        processor = AutoProcessor.from_pretrained(resolve_model(cfg.model.name).name_or_path, **kwargs)
        data.ensure_pad_token(processor.tokenizer)
        return processor

    def examples(self, cfg: Any, rows: Any, processor: Any, source: str,
                 label_names: Optional[list[str]] = None) -> tuple[list, list[str]]:
        from PIL import Image, UnidentifiedImageError

        folder = os.path.dirname(os.path.abspath(os.path.expanduser(source)))
        out, problems = [], []
        for index, row in enumerate(rows):
            try:
                images = [Image.open(os.path.join(folder, os.path.expanduser(p))).convert("RGB") for p in row["images"]]
            except (OSError, UnidentifiedImageError) as e:
                problems.append((index, "images", f"field 'images' has a file that cannot be read as an image ({e})"))
                continue
            conversation = _conversation(row)
            full = processor.apply_chat_template(conversation, tokenize=False)
            prompt = processor.apply_chat_template(conversation[:-1], tokenize=False, add_generation_prompt=True)
            enc = processor(images=images, text=full, return_tensors="pt")
            start = len(processor(images=images, text=prompt, return_tensors="pt")["input_ids"][0])
            ids = enc["input_ids"][0].tolist()
            if len(ids) > cfg.train.max_seq_len:  # image tokens cannot be cut: the row is refused
                problems.append((index, "messages", f"the row makes {len(ids)} tokens with its images, more than "
                                                    f"max_seq_len={cfg.train.max_seq_len}; raise max_seq_len"))
                continue
            out.append({"input_ids": ids, "labels": [data.IGNORE] * start + ids[start:],
                        "pixel_values": enc["pixel_values"], "prompt_length": start})
        if problems:
            data._fail(source, problems, "vision_chat rows")
        return data.Examples(out, source=source), []

    def collate(self, processor: Any):
        pad = processor.tokenizer.pad_token_id

        def collate(examples: list[dict]) -> dict[str, torch.Tensor]:
            batch = data.collate([{"input_ids": ex["input_ids"], "labels": ex["labels"]} for ex in examples], pad)
            return {**batch, "pixel_values": torch.cat([ex["pixel_values"] for ex in examples])}

        return collate

    def eval_texts(self, cfg: Any, rows: Any) -> tuple[list[str], list[str]]:
        return [row["messages"][-2]["content"] if len(row["messages"]) > 1 else "" for row in rows], \
            [row["messages"][-1]["content"] for row in rows]

    @torch.no_grad()
    def scores(self, model: Any, prep: Any, cfg: Any, batches: list[dict]) -> dict[str, float]:
        wanted = [m for m in cfg.eval.metrics if m != "loss"]
        if not wanted:
            return {}
        answers = []
        for ex in prep.eval_examples:  # one at a time: no padding inside a prompt with images
            ids = torch.tensor([ex["input_ids"][: ex["prompt_length"]]], device=device_of(model))
            out = unwrap(model).generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                         pixel_values=ex["pixel_values"].to(device_of(model)),
                                         max_new_tokens=cfg.eval.max_new_tokens, do_sample=False,
                                         pad_token_id=prep.tokenizer.tokenizer.pad_token_id)
            answers.append(prep.tokenizer.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip())
        prep.predictions = answers
        return text_scores(answers, [r.strip() for r in prep.eval_references], wanted)
