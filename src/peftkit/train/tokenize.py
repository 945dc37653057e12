"""Checked rows -> tokenized examples -> padded batches (the second half of :mod:`peftkit.train.data`).

Label masks follow the rendered chat template: only the assistant's tokens (and its end-of-turn
token) are learned when ``completion_only`` is on. Over-long rows are truncated with one warning
per file, or rejected with file, row and length under ``truncation: error``.

>>> batch = collate(tokenize_sft(ds, tok, "chat", 512)[:8], ensure_pad_token(tok))  # doctest: +SKIP
"""

from __future__ import annotations

import warnings

import torch
from torch.nn.utils.rnn import pad_sequence

from .data import _LISTED, IGNORE, DataError, Examples, _fail, _row_numbers


def ensure_pad_token(tokenizer) -> int:
    """The pad id; a tokenizer without one gets eos as pad, like ``peftkit.models.load_tokenizer``
    (harmless: padding is masked and labelled -100; a new token would resize the embeddings).
    ``collate(examples, ensure_pad_token(tok))``
    """
    if tokenizer.pad_token_id is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer.pad_token_id


def _encode(tokenizer, text: str) -> list[int]:
    # Rendered templates already spell out their special tokens (bos, turn markers).
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _chat_tokens(tokenizer, messages, completion_only: bool = True):
    """Token ids of a templated conversation, and labels on the assistant turns only.

    An assistant turn starts where the conversation before it, rendered with the generation
    prompt, ends, and stops where the conversation up to it ends.  Each piece of the rendered
    text is tokenized alone, so every prompt is tokenized exactly as at inference.  In a turn
    we learn the content and the end-of-turn token, not what follows it (ChatML's ``\\n``).
    """
    def render(msgs, generation_prompt=False):
        return tokenizer.apply_chat_template(msgs, tokenize=False,
                                             add_generation_prompt=generation_prompt)

    full, special = render(messages), set(tokenizer.all_special_ids)
    if not completion_only:
        return (_encode(tokenizer, full),) * 2  # the caller copies when it truncates
    ids, labels, done = [], [], 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before, upto = render(messages[:i], True), render(messages[:i + 1])
        if not (full.startswith(before) and full.startswith(upto) and done <= len(before)):
            raise DataError("the chat template does not render the conversation up to this turn "
                            "as a prefix of the whole, so the assistant tokens cannot be found; "
                            "set completion_only: false", field=f"messages[{i}]")
        turn, content = full[len(before):len(upto)], m["content"].strip()
        at = turn.find(content)
        cut = at + len(content) if at >= 0 else len(turn)  # content not found: learn the turn
        prompt, learn = _encode(tokenizer, full[done:len(before)]), _encode(tokenizer, turn[:cut])
        rest = _encode(tokenizer, turn[cut:])
        eot = next((k + 1 for k, t in enumerate(rest) if t in special), len(rest))
        ids += prompt + learn + rest
        labels += [IGNORE] * len(prompt) + learn + rest[:eot] + [IGNORE] * (len(rest) - eot)
        done = len(upto)
    tail = _encode(tokenizer, full[done:])
    return ids + tail, labels + [IGNORE] * len(tail)


def _completion_tokens(tokenizer, prompt: str, completion: str, completion_only: bool = True):
    """A user/assistant chat when the tokenizer has a template, else prompt + completion + eos
    (plain concatenation: end the prompt with any separator you want)."""
    if getattr(tokenizer, "chat_template", None):
        return _chat_tokens(tokenizer, [{"role": "user", "content": prompt}, {
            "role": "assistant", "content": completion}], completion_only)
    head = tokenizer(prompt)["input_ids"]  # with bos when the tokenizer adds one
    tail = _encode(tokenizer, completion) + [t for t in [tokenizer.eos_token_id] if t is not None]
    return head + tail, ([IGNORE] * len(head) if completion_only else head) + tail


def _tokenize_rows(ds, build, max_seq_len: int, truncation: str, source, field: str) -> Examples:
    """``build(row) -> {key prefix: (ids, labels)}`` for every row (labels: a list, or one int
    for classification); apply the truncation policy; leave out (and count) rows with no token
    to learn from; warn once for the whole file."""
    if truncation not in ("warn", "error"):
        raise ValueError(f"truncation must be 'warn' or 'error', got {truncation!r}")
    out, truncated, dropped = [], 0, []
    for index, row in enumerate(ds):
        try:
            parts = build(row)
        except DataError as e:  # about this row: add the file and the row number
            _fail(source, [(index, e.field, str(e))])
        longest = max(len(ids) for ids, _ in parts.values())
        if longest > max_seq_len and truncation == "error":
            _fail(source, [(index, field, f"field {field!r} makes a {longest}-token sequence, "
                            f"longer than max_seq_len={max_seq_len} (raise max_seq_len, shorten "
                            f"the row, or set truncation: warn)")])
        truncated += longest > max_seq_len
        example = {p + key: seq if isinstance(seq, int) else seq[:max_seq_len]
                   for p, pair in parts.items() for key, seq in zip(("input_ids", "labels"), pair)}
        if any(not isinstance(labels, int) and all(t == IGNORE for t in labels)
               for labels in (example[p + "labels"] for p in parts)):
            dropped.append(index)
            continue
        if "" in parts:
            example["attention_mask"] = [1] * len(example["input_ids"])
        out.append(example)
    rows = _row_numbers(source, dropped)
    if truncated or rows:  # one warning per file; the caller may log the counts too
        listed = ", ".join(map(str, rows[:_LISTED])) + (", ..." if len(rows) > _LISTED else "")
        warnings.warn(f"{source}: {truncated} of {len(ds)} rows were longer than max_seq_len="
                      f"{max_seq_len} tokens and were truncated" + (
                          f"; {len(rows)} rows had no completion tokens left to learn from and "
                          f"were skipped (rows {listed})" if rows else ""), stacklevel=3)
    if not out:
        raise DataError(f"{source}: no row has a token left to learn from with max_seq_len="
                        f"{max_seq_len}", file=source)
    return Examples(out, source=source, truncated=truncated, dropped_rows=rows)


def tokenize_sft(ds, tokenizer, fmt: str, max_seq_len: int, completion_only: bool = True,
                 truncation: str = "warn", *, source=None) -> Examples:
    """Tokenize ``chat``, ``prompt_completion`` or ``text`` rows for causal-LM fine-tuning into
    :class:`Examples` of ``input_ids``, ``labels``, ``attention_mask``.  With ``completion_only``
    the labels are -100 everywhere but the assistant's tokens and its end-of-turn token.
    ``tokenize_sft(ds, tok, "chat", 512, source="train.jsonl").truncated  # -> 0``
    """
    if fmt not in ("chat", "prompt_completion", "text"):
        raise ValueError(f"tokenize_sft reads chat, prompt_completion or text rows, not {fmt!r}")
    if fmt == "chat" and not getattr(tokenizer, "chat_template", None):
        raise DataError(f"{source}: format 'chat' needs a tokenizer with a chat template and "
                        f"this one has none (use prompt_completion)", file=source)
    eos = [t for t in [tokenizer.eos_token_id] if t is not None]

    def build(row):
        if fmt == "text":  # end with eos: the model learns where a document stops
            ids = tokenizer(row["text"])["input_ids"]
            return {"": (ids + eos if ids[-1:] != eos else ids,) * 2}
        return {"": _chat_tokens(tokenizer, row["messages"], completion_only) if fmt == "chat" else
                _completion_tokens(tokenizer, row["prompt"], row["completion"], completion_only)}

    field = {"chat": "messages", "prompt_completion": "completion", "text": "text"}[fmt]
    return _tokenize_rows(ds, build, max_seq_len, truncation, source, field)


def tokenize_preference(ds, tokenizer, max_seq_len: int, truncation: str = "warn", *,
                        source=None) -> Examples:
    """Tokenize ``prompt``/``chosen``/``rejected`` rows for DPO into ``chosen_input_ids``,
    ``chosen_labels``, ``rejected_input_ids``, ``rejected_labels``; prompt tokens are labelled
    -100 (a user/assistant chat when the tokenizer has a template).
    ``tokenize_preference(ds, tok, 512)[0]["chosen_labels"][:2]  # -> [-100, -100]``
    """
    def build(row):
        return {f"{side}_": _completion_tokens(tokenizer, row["prompt"], row[side])
                for side in ("chosen", "rejected")}

    return _tokenize_rows(ds, build, max_seq_len, truncation, source, "chosen")


def tokenize_classification(ds, tokenizer, text_field: str, label_field: str, max_seq_len: int,
                            truncation: str = "warn", *, source=None, label_names=None):
    """Tokenize text/label rows into examples whose ``labels`` is one int; return them and the
    label names, to save with the run.  String labels get ids in sorted order (numeric order when
    all are integers written as text, as in CSV); integer labels are kept, named "0".."n-1".
    Pass the training run's ``label_names`` for eval rows, so that ids match.  A truncated row
    keeps its first ``max_seq_len`` tokens.
    ``examples, names = tokenize_classification(ds, tok, "text", "label", 128)``
    """
    values = list(ds[label_field])
    if label_names is None:
        numeric = all(isinstance(v, int) or v.isdecimal() for v in values)
        label_names = [str(i) for i in range(max(map(int, values)) + 1)] if numeric else \
            sorted(set(values))
    ids = {name: i for i, name in enumerate(label_names)}
    unknown = [(i, label_field, f"field {label_field!r} is {v!r}, not one of the labels "
                f"({', '.join(label_names)})") for i, v in enumerate(values) if str(v) not in ids]
    if unknown:
        _fail(source, unknown, "labels")
    labels = iter(ids[str(v)] for v in values)  # build sees the rows in order, once each

    def build(row):
        return {"": (tokenizer(row[text_field])["input_ids"], next(labels))}

    return _tokenize_rows(ds, build, max_seq_len, truncation, source, text_field), label_names


def pack(examples, max_seq_len: int, eos_token_id: int | None = None) -> Examples:
    """Concatenate sft examples and cut them into ``max_seq_len`` blocks, labels alongside; the
    last block may be shorter, so every token is kept.  ``tokenize_sft`` ends each example with
    eos or end-of-turn; ``eos_token_id`` puts eos (labelled -100) between examples that do not.
    Blocks attend across examples, as in transformers' example scripts.  ``pack(examples, 512)``
    """
    ids, labels = [], []
    for ex in examples:
        if ids and eos_token_id is not None and ids[-1] != eos_token_id:
            ids.append(eos_token_id), labels.append(IGNORE)
        ids.extend(ex["input_ids"]), labels.extend(ex["labels"])
    # a block of prompt tokens only has nothing to learn from (and a batch of such blocks a NaN loss)
    starts = [i for i in range(0, len(ids), max_seq_len) if any(x != IGNORE for x in labels[i:i + max_seq_len])]
    return Examples(({"input_ids": ids[i:i + max_seq_len], "labels": labels[i:i + max_seq_len],
                      "attention_mask": [1] * len(ids[i:i + max_seq_len])} for i in starts),
                    source=getattr(examples, "source", None))


def collate(examples, pad_token_id: int) -> dict[str, torch.Tensor]:
    """Pad examples on the right into tensors: ids with ``pad_token_id``, labels with -100, and an
    ``attention_mask`` per sequence (``chosen_``/``rejected_`` keys too, for DPO); int labels
    (classification) give a 1-D ``labels``.  ``collate(examples, ensure_pad_token(tok))``
    """
    if pad_token_id is None:
        raise ValueError("collate needs a pad_token_id; see ensure_pad_token")
    batch = {}
    for p in (p for p in ("", "chosen_", "rejected_") if p + "input_ids" in examples[0]):
        seqs = [ex[p + "input_ids"] for ex in examples]
        batch[p + "input_ids"] = _pad(seqs, pad_token_id)
        batch[p + "attention_mask"] = _pad([[1] * len(s) for s in seqs], 0)
        labels = [ex[p + "labels"] for ex in examples if p + "labels" in ex]
        if labels:
            batch[p + "labels"] = torch.tensor(labels) if isinstance(labels[0], int) else \
                _pad(labels, IGNORE)
    return batch


def _pad(rows, value) -> torch.Tensor:
    return pad_sequence([torch.tensor(r, dtype=torch.long) for r in rows], batch_first=True,
                        padding_value=value)
