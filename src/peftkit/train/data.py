"""Data files -> checked rows -> tokenized examples -> padded batches, for every training task.

Formats and fields: ``chat`` (``messages``), ``prompt_completion`` (``prompt``, ``completion``),
``text``, ``classification`` (a text and a label field), ``preference`` (``prompt``, ``chosen``,
``rejected``).  Every problem names the file, the row and the field, before training starts.
Rows count as a person finds them: the line of a JSONL file, the spreadsheet row of a CSV file
(the header is row 1), else the N-th record.

>>> ds = load_rows("train.jsonl"); validate_rows(ds, "chat", "train.jsonl")  # doctest: +SKIP
>>> batch = collate(tokenize_sft(ds, tok, "chat", 512)[:8], ensure_pad_token(tok))  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import difflib
import json
import os
import random
import warnings

import torch
from torch.nn.utils.rnn import pad_sequence

from ..errors import PeftkitError

__all__ = ["FORMATS", "DataError", "Examples", "load_rows", "validate_rows", "ensure_pad_token",
           "tokenize_sft", "tokenize_classification", "tokenize_preference", "pack", "collate",
           "eval_split"]

FORMATS = ("chat", "prompt_completion", "text", "classification", "preference")
IGNORE = -100  # the label transformers' losses skip
_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
_ROLES = ("system", "user", "assistant")
_LISTED = 10  # problems shown in one error


class DataError(PeftkitError, ValueError):
    """A data file or row cannot be used.  ``file``, ``row`` (1-based) and ``field`` locate the
    first problem; ``problems`` holds every ``(row, field, message)`` found."""

    def __init__(self, message: str, *, file=None, row=None, field=None, problems=None):
        self.file, self.row, self.field = file, row, field
        self.problems = problems if problems is not None else [(row, field, message)]
        super().__init__(message)


class Examples(list):
    """Tokenized examples (dicts of token-id lists) and what tokenizing did: ``truncated`` rows
    were cut to ``max_seq_len``; ``dropped_rows`` (row numbers) had no token left to learn from,
    e.g. a completion truncated away, and are left out."""

    def __init__(self, items=(), *, source=None, truncated=0, dropped_rows=()):
        super().__init__(items)
        self.source, self.truncated, self.dropped_rows = source, truncated, list(dropped_rows)


def load_rows(path_or_id, split: str = "train", *, cache_dir=None):
    """Load a ``datasets.Dataset`` from a ``.jsonl``/``.json``/``.csv``/``.parquet`` file, a folder
    from ``save_to_disk`` (or of data files), else a Hugging Face Hub id.  CSV cells are read as
    text, so a completion "42" stays a string.  ``load_rows("data/train.csv")``
    """
    import datasets  # late: importing datasets takes a second or two

    source = os.fspath(path_or_id)
    path = os.path.expanduser(source)
    suffix = os.path.splitext(path)[1].lower()
    if os.path.isdir(path) and any(os.path.exists(os.path.join(path, f)) for f in
                                   ("dataset_info.json", "state.json", "dataset_dict.json")):
        try:
            ds = datasets.load_from_disk(path)
        except IndexError as err:  # what datasets raises for a saved dataset without rows
            raise DataError(f"{source}: the saved dataset has no rows", file=source) from err
        if isinstance(ds, datasets.DatasetDict) and split not in ds:
            raise DataError(f"{source}: the saved dataset has no split {split!r} (it has "
                            f"{', '.join(ds)})", file=source)
        ds = ds[split] if isinstance(ds, datasets.DatasetDict) else ds
    elif suffix in _BUILDERS and not os.path.isdir(path):
        ds = _load_file(path, source, suffix, split, cache_dir)
    else:  # a folder of data files, or a hub id
        try:
            ds = datasets.load_dataset(path, split=split, cache_dir=cache_dir)
        except (OSError, ValueError) as err:  # offline, unknown id or split
            raise DataError(f"{source}: no such data file or saved dataset, and datasets could "
                            f"not load it (from the Hugging Face Hub): {err}", file=source) from err
    if len(ds) == 0:
        raise DataError(f"{source}: the {split!r} split has no rows", file=source)
    return ds


def _load_file(path: str, source: str, suffix: str, split: str, cache_dir):
    import datasets

    if not os.path.isfile(path):
        raise DataError(f"{source}: no such file", file=source)
    with open(path, "rb") as f:  # stops at the first non-blank chunk: big files stay cheap
        if not any(chunk.strip() for chunk in iter(lambda: f.read(1 << 16), b"")):
            raise DataError(f"{source}: the file is empty (no rows to train on)", file=source)
    kwargs = {}
    if suffix == ".csv":  # pandas would guess column types and read "NA" or "None" as missing
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader)
            if not any(reader):
                raise DataError(f"{source}: the file has a header but no rows", file=source)
        kwargs = {"features": datasets.Features({c: datasets.Value("string") for c in header}),
                  "keep_default_na": False, "na_values": [""]}
    try:
        return datasets.load_dataset(_BUILDERS[suffix], data_files={split: path}, split=split,
                                     cache_dir=cache_dir, **kwargs)
    except Exception as err:  # arrow, pandas and datasets raise many types: find the bad row
        why = " (blank lines, and a field whose type changes between rows?)" \
            if _json_records(source) else ""  # this raises at a line that is not JSON
        raise DataError(f"{source}: datasets could not read the file: {err}{why}",
                        file=source) from err


def _json_records(source) -> list | None:
    """The rows of a local ``.json``/``.jsonl`` file as written (None for other sources); a
    DataError at the first line that is not JSON."""
    path = os.path.expanduser(os.fspath(source)) if source else ""
    suffix = os.path.splitext(path)[1].lower()
    if _BUILDERS.get(suffix) != "json" or not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        lines = [f.read()] if suffix == ".json" else [x for x in f if x.strip()]
    for n, line in enumerate(lines):
        try:
            lines[n] = json.loads(line)
        except json.JSONDecodeError as e:
            row = e.lineno if suffix == ".json" else _row_numbers(source, [n])[0]
            raise DataError(f"{source} row {row}: not valid JSON ({e.msg}, column {e.colno})",
                            file=source, row=row) from None
    records = lines[0] if suffix == ".json" and isinstance(lines[0], list) else lines
    odd = [(i, None, f"is {_describe(r)}, not an object") for i, r in enumerate(records)
           if not isinstance(r, dict) and suffix == ".jsonl"]
    return _fail(source, odd) if odd else records


def _row_numbers(source, indexes: list[int]) -> list[int]:
    """Rows as a person counts them (see the module docstring) for 0-based dataset indexes."""
    path = os.path.expanduser(os.fspath(source)) if source else ""
    suffix = os.path.splitext(path)[1].lower()
    if suffix != ".jsonl" or not os.path.isfile(path):
        return [i + (2 if suffix == ".csv" else 1) for i in indexes]
    with open(path, encoding="utf-8") as f:  # datasets skips blank lines; people count them
        lines = [n for n, line in enumerate(f, 1) if line.strip()]
    return [lines[i] if i < len(lines) else i + 1 for i in indexes]


def _fail(source, problems: list, what: str = "rows"):
    """Raise one DataError for ``(index, field, message)`` problems, the first ten listed."""
    source = source or "data"
    rows = _row_numbers(source, [i for i, _, _ in problems])
    lines = [f"{source} row {r}: {msg}" for r, (_, _, msg) in zip(rows, problems)]
    message = lines[0] if len(lines) == 1 else (
        f"{source}: {len(lines)} problems in the {what}"
        + (f", the first {_LISTED} listed" if len(lines) > _LISTED else "")
        + "; fix them and run again:\n" + "\n".join("  " + x for x in lines[:_LISTED]))
    raise DataError(message, file=str(source), row=rows[0], field=problems[0][1],
                    problems=[(r, f, x) for r, (_, f, _), x in zip(rows, problems, lines)])


def validate_rows(ds, fmt: str, source, *, text_field: str = "text", label_field: str = "label"):
    """Check that every row has the fields ``fmt`` needs, with the right types; raise one
    :class:`DataError` listing the first ten problems (and how many there are in all), e.g.
    ``data/train.jsonl row 7: field 'completion' is missing (expected a string)``.
    """
    fields = {"chat": ["messages"], "prompt_completion": ["prompt", "completion"],
              "text": ["text"], "classification": [text_field, label_field],
              "preference": ["prompt", "chosen", "rejected"]}.get(fmt)
    if fields is None:
        raise ValueError(f"unknown data format {fmt!r}; use one of {', '.join(FORMATS)}")
    columns = ds.column_names
    guess = {f: difflib.get_close_matches(f, columns, 1) for f in fields}  # a misspelt name?
    absent = [(0, f, f"field {f!r} is missing in every row (the columns are {', '.join(columns)})"
               + "".join(f"; did you mean {g!r}?" for g in guess[f]))
              for f in fields if f not in columns]  # said once for the whole file
    if absent:
        _fail(source, absent, f"{fmt} rows")
    table = ds.select_columns(fields)
    # datasets keeps a field whose JSON type changes between rows as JSON text and reads a string
    # such as "42" back as a number: check such files as written.
    raw = _json_records(source) if "Json(" in repr(table.features) else None
    problems, kinds = [], {}
    for start in range(0, len(ds), 1000):  # column batches: much faster than one dict a row
        batch = table[start:start + 1000] if raw is None else \
            {f: [r.get(f) for r in raw[start:start + 1000]] for f in fields}
        for i, values in enumerate(zip(*(batch[f] for f in fields)), start):
            for name, value in zip(fields, values):
                msg = (_check_chat(value) if fmt == "chat" else _check_label(value, name, kinds)
                       if fmt == "classification" and name == label_field else
                       None if isinstance(value, str) else
                       f"field {name!r} is {_describe(value)} (expected a string)")
                problems += [(i, name, msg)] if msg else []
    if problems:
        _fail(source, problems, f"{fmt} rows")


def _describe(value) -> str:
    kinds = ((type(None), "missing"), (bool, "a boolean"), ((int, float), "a number"),
             (str, "a string"), (list, "a list"), (dict, "an object"))
    kind = next((k for t, k in kinds if isinstance(value, t)), type(value).__name__)
    return f"{kind} ({value!r})" if isinstance(value, (bool, int, float)) else kind


def _check_label(value, name: str, kinds: dict) -> str | None:
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        return f"field {name!r} is {_describe(value)} (expected a string or an integer)"
    if isinstance(value, int) and value < 0:
        return f"field {name!r} is {value} (integer labels start at 0)"
    first = kinds.setdefault("first", type(value))  # label names: all strings or all integers
    kind = "strings" if first is str else "integers"
    return None if first is type(value) else \
        f"field {name!r} is {_describe(value)}, but earlier labels are {kind}"


def _check_chat(messages) -> str | None:
    if not isinstance(messages, list) or not messages:
        got = "an empty list" if messages == [] else _describe(messages)
        return f"field 'messages' is {got} (expected a list of {{role, content}} messages)"
    for i, m in enumerate(messages):
        role, content = (m.get("role"), m.get("content")) if isinstance(m, dict) else (None, None)
        if not isinstance(m, dict):
            return f"field 'messages[{i}]' is {_describe(m)} (expected an object: role, content)"
        if role not in _ROLES:
            got = repr(role) if isinstance(role, str) else _describe(role)
            return f"field 'messages[{i}].role' is {got} (expected one of {', '.join(_ROLES)})"
        if not isinstance(content, str):
            return f"field 'messages[{i}].content' is {_describe(content)} (expected a string)"
    if messages[-1]["role"] != "assistant":  # the last turn is what the model learns to write
        return f"field 'messages' ends with a {messages[-1]['role']!r} turn (expected 'assistant')"
    return None


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


def eval_split(ds, fraction: float, seed: int):
    """Hold out ``fraction`` of the rows for evaluation, the same rows for the same seed, both
    parts in file order: ``train, held_out = eval_split(ds, 0.1, seed=0)``.
    """
    n_eval = max(1, round(len(ds) * fraction)) if 0 < fraction < 1 else 0
    if not 0 < n_eval < len(ds):
        raise DataError(f"cannot hold out {fraction!r} of {len(ds)} rows for evaluation and still "
                        f"train on some (use a fraction between 0 and 1)")
    held = set(random.Random(seed).sample(range(len(ds)), n_eval))  # stable across versions
    return ds.select([i for i in range(len(ds)) if i not in held]), ds.select(sorted(held))
