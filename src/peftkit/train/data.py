"""Data files -> checked rows -> tokenized examples -> padded batches, for every training task.

Formats and fields: ``chat`` (``messages``), ``prompt_completion`` (``prompt``, ``completion``),
``text``, ``classification`` (a text and a label field), ``preference`` (``prompt``, ``chosen``,
``rejected``), ``seq2seq`` (``source``, ``target``), ``token_classification`` (``tokens``, ``tags``),
``speech`` (``audio``, a transcript field); ``vision_chat`` is checked by its task (docs/tasks.md).  Every problem names the file, the row and the field, before training starts.
Rows count as a person finds them: the line of a JSONL file, the spreadsheet row of a CSV file
(the header is row 1), else the N-th record.

>>> ds = load_rows("train.jsonl"); validate_rows(ds, "chat", "train.jsonl")  # doctest: +SKIP
>>> batch = collate(tokenize_sft(ds, tok, "chat", 512)[:8], ensure_pad_token(tok))  # doctest: +SKIP
"""

from __future__ import annotations

import codecs
import csv
import difflib
import json
import os
import random


from ..errors import PeftkitError

__all__ = ["FORMATS", "DataError", "Examples", "load_rows", "validate_rows", "ensure_pad_token",
           "tokenize_sft", "tokenize_classification", "tokenize_preference", "pack", "collate",
           "eval_split"]

FORMATS = ("chat", "prompt_completion", "text", "classification", "preference", "seq2seq",
           "token_classification", "speech")
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
    if suffix == ".parquet":
        _check_parquet(path, source)
    else:
        _check_utf8(path, source)
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
        ds = datasets.load_dataset(_BUILDERS[suffix], data_files={split: path}, split=split,
                                   cache_dir=cache_dir, **kwargs)
        if _BUILDERS[suffix] == "json" and any("timestamp" in repr(f) or "date" in repr(f) for f in ds.features.values()):
            # arrow's JSON reader turns text such as "2024-03-01" into dates: keep the strings as written
            ds = datasets.Dataset.from_list(_json_records(source))
        return ds
    except Exception as err:  # arrow, pandas and datasets raise many types: find the bad row
        why = " (blank lines, and a field whose type changes between rows?)" \
            if _json_records(source) else ""  # this raises at a line that is not JSON
        raise DataError(f"{source}: datasets could not read the file: {err}{why}",
                        file=source) from err


def _check_parquet(path: str, source) -> None:
    """A parquet file starts and ends with the bytes PAR1; anything else is not one (arrow would
    log a traceback before failing)."""
    with open(path, "rb") as f:
        head = f.read(4)
        f.seek(max(0, os.path.getsize(path) - 4))
        tail = f.read(4)
    if head != b"PAR1" or tail != b"PAR1" or os.path.getsize(path) < 12:
        raise DataError(f"{source}: not a parquet file (it lacks the PAR1 markers at its start and end)", file=source)


def _check_utf8(path: str, source) -> None:
    """A text data file must be UTF-8; otherwise a DataError names the first row that is not
    (datasets and csv would fail far from the data, naming neither file nor row)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    row = 1
    with open(path, "rb") as f:
        for piece in iter(lambda: f.readline(1 << 16), b""):  # b"\n" never occurs inside a UTF-8 character
            try:
                decoder.decode(piece, final=False)
            except UnicodeDecodeError:
                break
            row += piece.endswith(b"\n")
        else:
            try:
                decoder.decode(b"", final=True)
                return
            except UnicodeDecodeError:
                pass
    raise DataError(f"{source} row {row}: not UTF-8 text (a binary file, or another encoding?); save the data as "
                    "UTF-8", file=source, row=row)


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
              "preference": ["prompt", "chosen", "rejected"], "seq2seq": ["source", "target"],
              "token_classification": ["tokens", "tags"], "speech": ["audio", text_field]}.get(fmt)
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
            row = dict(zip(fields, values))
            for name, value in row.items():
                msg = _check_field(fmt, name, value, row, label_field, kinds)
                problems += [(i, name, msg)] if msg else []
    if problems:
        _fail(source, problems, f"{fmt} rows")


def _check_field(fmt: str, name: str, value, row: dict, label_field: str, kinds: dict) -> str | None:
    """What is wrong with one field of one row (None when nothing is)."""
    if fmt == "chat":
        return _check_chat(value)
    if fmt == "classification" and name == label_field:
        return _check_label(value, name, kinds)
    if fmt == "token_classification":
        return _check_words(value, name, row.get("tokens"))
    if not isinstance(value, str):
        return f"field {name!r} is {_describe(value)} (expected a string)"
    if fmt in ("seq2seq", "speech") and not value.strip():
        return f"field {name!r} is empty (expected some text)"
    return None


def _check_words(value, name: str, tokens) -> str | None:
    """``tokens`` and ``tags``: non-empty lists of strings, one tag per token."""
    if not isinstance(value, list) or not value:
        got = "an empty list" if value == [] else _describe(value)
        return f"field {name!r} is {got} (expected a list of strings)"
    odd = next((i for i, v in enumerate(value) if not isinstance(v, str)), None)
    if odd is not None:
        return f"field '{name}[{odd}]' is {_describe(value[odd])} (expected a string)"
    if name == "tags" and isinstance(tokens, list) and len(tokens) != len(value):
        return f"field 'tags' has {len(value)} tags for {len(tokens)} tokens (expected one tag per token)"
    return None


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


# Tokenizing lives in its own module; these names stay importable from here.
from .tokenize import collate, ensure_pad_token, pack, tokenize_classification, tokenize_preference, tokenize_sft  # noqa: E402
