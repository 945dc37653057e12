"""``token_classification``: one tag per word (named entities, parts of speech) with an encoder and
a token-classification head. Rows are ``{"tokens": [...], "tags": [...]}``, one tag per token, in
IOB style for entities (``B-PER``, ``I-PER``, ``O``). A word's tag labels its first sub-word; the
other sub-words and special tokens are left out of the loss (-100). Metrics come from seqeval:
entity-level precision, recall and F1, and word-level accuracy.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from .. import data
from ..tokenize import _tokenize_rows
from .base import ModelTask, device_of
from .metrics import entity_scores


class TokenClassificationTask(ModelTask):
    """Tagged words for ``AutoModelForTokenClassification``; label names are the training tags,
    sorted, saved with the adapter as ``labels.json``.

    Example:
        >>> examples, names = TokenClassificationTask().examples(cfg, rows, tok, "ner.jsonl")  # doctest: +SKIP
        >>> names
        ['B-PER', 'I-PER', 'O']
    """

    name = "token_classification"

    def examples(self, cfg: Any, rows: Any, processor: Any, source: str,
                 label_names: Optional[list[str]] = None) -> tuple[list, list[str]]:
        tokenizer = self.tokenizer(processor)
        if not getattr(tokenizer, "is_fast", False):
            raise data.DataError(f"{source}: token_classification needs a fast tokenizer (one that maps "
                                 f"sub-words back to words); {cfg.model.name!r} has a slow one", file=source)
        if label_names is None:
            label_names = sorted({tag for tags in rows["tags"] for tag in tags})
        ids = {name: i for i, name in enumerate(label_names)}
        unknown = [(i, "tags", f"field 'tags' has {tag!r}, which no training row uses (known: "
                               f"{', '.join(label_names)})")
                   for i, tags in enumerate(rows["tags"]) for tag in dict.fromkeys(tags) if tag not in ids]
        if unknown:
            data._fail(source, unknown, "tags")

        def build(row):
            enc = tokenizer(row["tokens"], is_split_into_words=True)
            labels, previous = [], None
            for word in enc.word_ids():
                first = word is not None and word != previous
                labels.append(ids[row["tags"][word]] if first else data.IGNORE)
                previous = word
            return {"": (enc["input_ids"], labels)}

        t = cfg.train
        return _tokenize_rows(rows, build, t.max_seq_len, t.truncation, source, "tokens"), label_names

    def eval_texts(self, cfg: Any, rows: Any) -> tuple[list[str], list[str]]:
        return [" ".join(tokens) for tokens in rows["tokens"]], [" ".join(tags) for tags in rows["tags"]]

    def model_kwargs(self, label_names: list[str]) -> dict[str, Any]:
        return dict(num_labels=len(label_names), id2label=dict(enumerate(label_names)),
                    label2id={n: i for i, n in enumerate(label_names)})

    @torch.no_grad()
    def scores(self, model: Any, prep: Any, cfg: Any, batches: list[dict]) -> dict[str, float]:
        wanted = [m for m in cfg.eval.metrics if m != "loss"]
        if not wanted:
            return {}
        predicted, gold = [], []
        for batch in batches:
            inputs = {k: v.to(device_of(model)) for k, v in batch.items() if k != "labels"}
            best = model(**inputs).logits.argmax(-1).cpu()
            for row_pred, row_gold in zip(best, batch["labels"].cpu()):
                words = row_gold != data.IGNORE  # the first sub-word of each word (kept after truncation)
                predicted.append([prep.label_names[i] for i in row_pred[words].tolist()])
                gold.append([prep.label_names[i] for i in row_gold[words].tolist()])
        prep.predictions = [" ".join(tags) for tags in predicted]
        return entity_scores(predicted, gold, wanted)
