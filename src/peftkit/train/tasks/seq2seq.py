"""``seq2seq``: text to text with an encoder-decoder model (T5, BART, mT5, Marian...): translation,
summarization, rewriting. Rows are ``{"source": ..., "target": ...}``; the encoder reads the source,
the decoder learns the target (and its end token). Evaluation generates greedily from each source
and scores the outputs with sacrebleu (BLEU, chrF), rouge-score and exact match.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from ..tokenize import _tokenize_rows
from .base import ModelTask, device_of, unwrap
from .metrics import text_scores


class Seq2SeqTask(ModelTask):
    """Source/target rows for ``AutoModelForSeq2SeqLM``.

    Example:
        >>> examples, _ = Seq2SeqTask().examples(cfg, rows, tokenizer, "train.jsonl")  # doctest: +SKIP
        >>> sorted(examples[0])
        ['attention_mask', 'input_ids', 'labels']
    """

    name = "seq2seq"

    def examples(self, cfg: Any, rows: Any, processor: Any, source: str,
                 label_names: Optional[list[str]] = None) -> tuple[list, list[str]]:
        tokenizer = self.tokenizer(processor)
        eos = tokenizer.eos_token_id

        def ended(ids: list[int]) -> list[int]:  # T5's and BART's tokenizers end with eos; others may not
            return ids + [eos] if eos is not None and ids[-1:] != [eos] else ids

        def build(row):
            ids = ended(tokenizer(row["source"])["input_ids"])
            target = ended(tokenizer(text_target=row["target"])["input_ids"])
            return {"": (ids, target)}

        t = cfg.train
        return _tokenize_rows(rows, build, t.max_seq_len, t.truncation, source, "source"), []

    def eval_texts(self, cfg: Any, rows: Any) -> tuple[list[str], list[str]]:
        return list(rows["source"]), list(rows["target"])

    def scores(self, model: Any, prep: Any, cfg: Any, batches: list[dict]) -> dict[str, float]:
        wanted = [m for m in cfg.eval.metrics if m != "loss"]
        if not wanted:
            return {}
        prep.predictions = generate_texts(model, self.tokenizer(prep.tokenizer), batches, cfg.eval.max_new_tokens)
        return text_scores(prep.predictions, prep.eval_references, wanted)


@torch.no_grad()
def generate_texts(model: Any, tokenizer: Any, batches: list[dict], max_new_tokens: int) -> list[str]:
    """Greedy outputs of an encoder-decoder for each batch's encoder inputs (everything in the batch
    but ``labels``), decoded without special tokens."""
    texts: list[str] = []
    for batch in batches:
        inputs = {k: v.to(device_of(model)) for k, v in batch.items() if k != "labels"}
        out = unwrap(model).generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        texts += tokenizer.batch_decode(out, skip_special_tokens=True)
    return [t.strip() for t in texts]


__all__ = ["Seq2SeqTask", "generate_texts"]
