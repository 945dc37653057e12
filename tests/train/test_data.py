"""Tests for peftkit.train.data: loading, row validation, tokenization, packing, batching.

Fast tests use a byte-level tokenizer built here (one token per byte, so decoding gives back
exactly the text, and label masks can be checked character for character) with a ChatML-style
template like SmolLM2's.  One slow test checks the mask on the real SmolLM2 tokenizer.
"""

from __future__ import annotations

import json
import warnings

import datasets
import pytest
import torch
from tiny_assets import CHATML, tiny_tokenizer

from peftkit.errors import PeftkitError
from peftkit.train.data import (
    IGNORE,
    DataError,
    Examples,
    collate,
    ensure_pad_token,
    eval_split,
    load_rows,
    pack,
    tokenize_classification,
    tokenize_preference,
    tokenize_sft,
    validate_rows,
)

datasets.disable_progress_bars()

ROWS = {
    "chat": [{"messages": [{"role": "user", "content": "Hi"},
                           {"role": "assistant", "content": "Hello!"}]},
             {"messages": [{"role": "system", "content": "Be brief."},
                           {"role": "user", "content": "2+2?"},
                           {"role": "assistant", "content": "4"}]}],
    "prompt_completion": [{"prompt": "Say hi:", "completion": " hi"},
                          {"prompt": "Capital of France?", "completion": "42"}],
    "text": [{"text": "The quick brown fox."}, {"text": "NA"}],
    "classification": [{"text": "great film", "label": "pos"}, {"text": "dull", "label": "neg"},
                       {"text": "fine", "label": "pos"}],
    "preference": [{"prompt": "Greet:", "chosen": "Hello", "rejected": "Go away"},
                   {"prompt": "Add 1+1:", "chosen": "2", "rejected": "3"}],
}


def make_tokenizer(template: str | None = CHATML):
    """The shared byte-level test tokenizer, without a pad token (tests supply one themselves)."""
    return tiny_tokenizer(template, pad=False)


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.fixture(scope="module")
def plain_tok():
    return make_tokenizer(template=None)


def write(tmp_path, rows, kind, name="train"):
    """Write rows as a .jsonl/.json/.csv/.parquet file or a saved dataset folder; return the path."""
    path = tmp_path / (name if kind == "saved" else f"{name}.{kind}")
    if kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif kind == "json":
        path.write_text(json.dumps(rows))
    elif kind == "csv":
        datasets.Dataset.from_list(rows).to_csv(str(path), index=False)
    elif kind == "parquet":
        datasets.Dataset.from_list(rows).to_parquet(str(path))
    else:
        datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return str(path)


def load(path, tmp_path):
    return load_rows(path, cache_dir=str(tmp_path / "cache"))


def bad(tmp_path, fmt, rows, **kw):
    """Validate rows written to a jsonl file; return the DataError raised."""
    path = write(tmp_path, rows, "jsonl")
    with pytest.raises(DataError) as info:
        validate_rows(load(path, tmp_path), fmt, path, **kw)
    return info.value, path


def decoded_labels(tokenizer, example, prefix=""):
    return tokenizer.decode([t for t in example[prefix + "labels"] if t != IGNORE])


# ----------------------------------------------------------------------------------- loading

CASES = [(fmt, kind) for fmt in ROWS for kind in ("jsonl", "csv", "saved") if fmt != "chat"]
CASES += [("chat", "jsonl"), ("chat", "saved"), ("chat", "json"), ("chat", "parquet"),
          ("prompt_completion", "json"), ("prompt_completion", "parquet")]


@pytest.mark.parametrize("fmt,kind", CASES)
def test_each_format_loads_and_validates(tmp_path, fmt, kind):
    path = write(tmp_path, ROWS[fmt], kind)
    ds = load(path, tmp_path)
    validate_rows(ds, fmt, path)
    assert ds.to_list() == ROWS[fmt]


def test_csv_cells_stay_text(tmp_path):
    # pandas would read "42" as a number and "NA" as missing; both are text in a data file.
    path = tmp_path / "t.csv"
    path.write_text('prompt,completion\n"2+40=",42\nSay NA:,NA\n')
    ds = load(str(path), tmp_path)
    validate_rows(ds, "prompt_completion", str(path))
    assert ds["completion"] == ["42", "NA"]


def test_saved_dataset_dict_picks_the_split(tmp_path):
    rows = ROWS["text"]
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows),
                          "test": datasets.Dataset.from_list(rows[:1])}).save_to_disk(
        str(tmp_path / "dd"))
    assert len(load_rows(str(tmp_path / "dd"), split="test")) == 1
    with pytest.raises(DataError, match="no split 'validation'.*train, test"):
        load_rows(str(tmp_path / "dd"), split="validation")


@pytest.mark.parametrize("content,kind", [("", "jsonl"), ("\n  \n", "jsonl"), ("", "json"),
                                          ("prompt,completion\n", "csv"), ("[]", "json")])
def test_empty_file_names_the_file(tmp_path, content, kind):
    path = tmp_path / f"empty.{kind}"
    path.write_text(content)
    with pytest.raises(DataError, match="empty.(jsonl|csv|json).*(empty|no rows|no data)") as info:
        load(str(path), tmp_path)
    assert info.value.file == str(path)
    assert isinstance(info.value, PeftkitError) and isinstance(info.value, ValueError)


def test_empty_saved_dataset(tmp_path):
    datasets.Dataset.from_dict({"text": []}).save_to_disk(str(tmp_path / "none"))
    with pytest.raises(DataError, match="none.*no rows"):
        load_rows(str(tmp_path / "none"))


def test_missing_file_and_invalid_json(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl: no such file"):
        load_rows(str(tmp_path / "nope.jsonl"))
    path = tmp_path / "broken.jsonl"
    path.write_text('{"text": "a"}\n5\n')
    with pytest.raises(DataError, match=r"broken.jsonl row 2: is a number \(5\), not an object"):
        load(str(path), tmp_path)
    path.write_text('{"text": "a"}\n{"text": "b"\n')
    with pytest.raises(DataError, match=r"broken.jsonl row 2: not valid JSON") as info:
        load(str(path), tmp_path)
    assert info.value.row == 2


def test_unreachable_hub_id_is_a_data_error():
    with pytest.raises(DataError, match="someone/no-such-dataset.*Hub"):
        load_rows("someone/no-such-dataset")


# -------------------------------------------------------------------------------- validation

MSG = {"role": "user", "content": "q"}
ANS = {"role": "assistant", "content": "a"}
BAD_ROWS = [  # format, the bad row, the field named, words in the message
    ("prompt_completion", {"prompt": "p"}, "completion", "is missing (expected a string)"),
    ("prompt_completion", {"prompt": "p", "completion": None}, "completion", "is missing"),
    ("prompt_completion", {"prompt": "p", "completion": 5}, "completion", "a number (5)"),
    ("prompt_completion", {"prompt": ["p"], "completion": "c"}, "prompt", "is a list"),
    ("text", {"text": None}, "text", "is missing"),
    ("text", {"text": {"a": 1}}, "text", "is an object"),
    ("preference", {"prompt": "p", "chosen": "c"}, "rejected", "is missing"),
    ("preference", {"prompt": "p", "chosen": True, "rejected": "r"}, "chosen", "a boolean"),
    ("classification", {"text": "t", "label": 1.5}, "label", "a number (1.5)"),
    ("classification", {"text": "t"}, "label", "is missing (expected a string or an integer)"),
    ("classification", {"text": 3, "label": "x"}, "text", "a number"),
    ("chat", {"messages": "hello"}, "messages", "a string"),
    ("chat", {"messages": []}, "messages", "an empty list"),
    ("chat", {"messages": [MSG, "a"]}, "messages", "'messages[1]' is a string"),
    ("chat", {"messages": [{"role": "bot", "content": "x"}, ANS]}, "messages",
     "'messages[0].role' is 'bot' (expected one of system, user, assistant)"),
    ("chat", {"messages": [{"content": "x"}, ANS]}, "messages", "'messages[0].role' is missing"),
    ("chat", {"messages": [MSG, {"role": "assistant", "content": 7}]}, "messages",
     "'messages[1].content' is a number"),
    ("chat", {"messages": [MSG, {"role": "assistant"}]}, "messages",
     "'messages[1].content' is missing (expected a string)"),
    ("chat", {"messages": [MSG]}, "messages", "ends with a 'user' turn"),
    ("chat", {"messages": [MSG, ANS, MSG]}, "messages", "ends with a 'user' turn"),
]


@pytest.mark.parametrize("fmt,row,field,words", BAD_ROWS)
def test_bad_row_names_file_row_and_field(tmp_path, fmt, row, field, words):
    rows = [ROWS[fmt][0], ROWS[fmt][1], row, ROWS[fmt][0]]
    err, path = bad(tmp_path, fmt, rows)
    assert str(err).startswith(f"{path} row 3: field '{field}")
    assert words in str(err)
    assert (err.file, err.row, err.field) == (path, 3, field)


def test_a_type_that_changes_between_rows_is_checked_as_written(tmp_path):
    # datasets keeps such a column as JSON text and reads the string "42" back as a number 42.
    rows = [{"prompt": "a", "completion": "42"}, {"prompt": "b", "completion": 7},
            {"prompt": "c", "completion": "null"}]
    err, path = bad(tmp_path, "prompt_completion", rows)
    assert str(err) == f"{path} row 2: field 'completion' is a number (7) (expected a string)"
    rows = [{"text": "a", "label": "pos"}, {"text": "b", "label": "neg"}, {"text": "c", "label": 1}]
    err, path = bad(tmp_path, "classification", rows)
    assert str(err) == f"{path} row 3: field 'label' is a number (1), but earlier labels are strings"


@pytest.mark.parametrize("labels,words", [([0, -1], "field 'label' is -1 (integer labels start at 0)"),
                                          ([0.5, 1.5], "field 'label' is a number (1.5) (expected")])
def test_label_values(tmp_path, labels, words):
    err, path = bad(tmp_path, "classification", [{"text": "a", "label": v} for v in labels])
    assert f"{path} row 2: {words}" in str(err)


def test_custom_classification_fields(tmp_path):
    rows = [{"sentence": "a", "y": 0}, {"sentence": "b"}]
    err, path = bad(tmp_path, "classification", rows, text_field="sentence", label_field="y")
    assert f"{path} row 2: field 'y' is missing" in str(err)


def test_column_missing_everywhere_suggests_a_name(tmp_path):
    err, path = bad(tmp_path, "prompt_completion", [{"prompt": "p", "completions": "c"}])
    assert f"{path} row 1: field 'completion' is missing in every row" in str(err)
    assert "did you mean 'completions'?" in str(err)


def test_problems_are_reported_together_up_to_ten(tmp_path):
    rows = [{"prompt": "p", "completion": "c"}] + [{"prompt": "p"} for _ in range(12)]
    err, path = bad(tmp_path, "prompt_completion", rows)
    text = str(err)
    assert text.startswith(f"{path}: 12 problems in the prompt_completion rows, the first 10 listed")
    assert f"{path} row 2: field 'completion' is missing" in text and f"{path} row 11:" in text
    assert f"{path} row 12:" not in text
    assert len(err.problems) == 12 and err.row == 2 and err.problems[-1][0] == 13


def test_row_numbers_count_lines_and_spreadsheet_rows(tmp_path):
    path = tmp_path / "gaps.jsonl"  # datasets skips blank lines; the message must not
    path.write_text('{"text": "a"}\n\n\n{"text": null}\n')
    with pytest.raises(DataError, match=r"gaps.jsonl row 4: field 'text' is missing"):
        validate_rows(load(str(path), tmp_path), "text", str(path))
    path.write_text('{"text": "a"}\n\n{"text": 1}\n')  # datasets fails on this: say why
    with pytest.raises(DataError, match=r"gaps.jsonl: datasets could not .*blank lines, and a field"):
        load(str(path), tmp_path)
    path.write_text('{"text": "a"}\n\n{"text": "b"\n')
    with pytest.raises(DataError, match=r"gaps.jsonl row 3: not valid JSON") as info:
        load(str(path), tmp_path)
    assert info.value.row == 3
    path = tmp_path / "t.csv"  # header is row 1, as in a spreadsheet; a quoted newline is one row
    path.write_text('prompt,completion\n"two\nlines",ok\np,\n')
    with pytest.raises(DataError, match=r"t.csv row 3: field 'completion' is missing"):
        validate_rows(load(str(path), tmp_path), "prompt_completion", str(path))


def test_unknown_format():
    with pytest.raises(ValueError, match="unknown data format 'chatml'"):
        validate_rows(datasets.Dataset.from_list(ROWS["text"]), "chatml", "x.jsonl")


# ------------------------------------------------------------------------------ tokenization

def test_chat_labels_cover_exactly_the_assistant_turns(tok):
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q1"},
                {"role": "assistant", "content": "A one"}, {"role": "user", "content": "Q2"},
                {"role": "assistant", "content": "A two"}]
    ds = datasets.Dataset.from_list([{"messages": messages}])
    (ex,) = tokenize_sft(ds, tok, "chat", 512)
    assert tok.decode(ex["input_ids"]) == tok.apply_chat_template(messages, tokenize=False)
    spans, current = [], []
    for token, label in zip(ex["input_ids"], ex["labels"]):
        assert label in (IGNORE, token)
        if label == IGNORE and current:
            spans, current = spans + [tok.decode(current)], []
        elif label != IGNORE:
            current.append(token)
    assert spans + ([tok.decode(current)] if current else []) == ["A one<|im_end|>", "A two<|im_end|>"]
    assert ex["attention_mask"] == [1] * len(ex["input_ids"])


def test_prompt_completion_with_and_without_template(tok, plain_tok):
    ds = datasets.Dataset.from_list(ROWS["prompt_completion"])
    chat = tokenize_sft(ds, tok, "prompt_completion", 512)
    assert [decoded_labels(tok, ex) for ex in chat] == [" hi<|im_end|>", "42<|im_end|>"]
    assert tok.decode(chat[0]["input_ids"]).startswith("<|im_start|>user\nSay hi:<|im_end|>")
    plain = tokenize_sft(ds, plain_tok, "prompt_completion", 512)
    assert plain_tok.decode(plain[0]["input_ids"]) == "Say hi: hi<|im_end|>"
    assert [decoded_labels(plain_tok, ex) for ex in plain] == [" hi<|im_end|>", "42<|im_end|>"]


def test_text_and_full_sequence_labels(tok):
    ds = datasets.Dataset.from_list(ROWS["text"])
    (ex, _) = tokenize_sft(ds, tok, "text", 512)
    assert ex["labels"] == ex["input_ids"]
    assert tok.decode(ex["input_ids"]) == "The quick brown fox.<|im_end|>"
    ds = datasets.Dataset.from_list(ROWS["chat"])
    for ex in tokenize_sft(ds, tok, "chat", 512, completion_only=False):
        assert ex["labels"] == ex["input_ids"]


def test_truncation_warns_once_with_the_count(tok, tmp_path):
    rows = [{"text": "short"}, {"text": "x" * 50}, {"text": "y" * 60}]
    path = write(tmp_path, rows, "jsonl")
    with pytest.warns(UserWarning) as caught:
        out = tokenize_sft(load(path, tmp_path), tok, "text", 20, source=path)
    assert len(caught) == 1
    assert f"{path}: 2 of 3 rows were longer than max_seq_len=20" in str(caught[0].message)
    assert out.truncated == 2 and out.dropped_rows == [] and len(out) == 3
    assert [len(ex["input_ids"]) for ex in out] == [6, 20, 20]


def test_truncation_error_names_file_row_and_length(tok, tmp_path):
    rows = [{"prompt": "p", "completion": "c"}, {"prompt": "p", "completion": "c" * 40}]
    path = write(tmp_path, rows, "jsonl")
    with pytest.raises(DataError) as info:
        tokenize_sft(load(path, tmp_path), tok, "prompt_completion", 32, truncation="error",
                     source=path)
    assert str(info.value).startswith(f"{path} row 2: field 'completion' makes a ")
    assert "-token sequence, longer than max_seq_len=32" in str(info.value)
    assert (info.value.row, info.value.field) == (2, "completion")


def test_completion_truncated_away_is_counted_not_trained_on(tok, tmp_path):
    rows = [{"prompt": "short", "completion": "ok"}, {"prompt": "a very long prompt " * 3,
                                                      "completion": "lost"}]
    path = write(tmp_path, rows, "jsonl")
    with pytest.warns(UserWarning, match=r"1 rows had no completion tokens left .*rows 2\)"):
        out = tokenize_sft(load(path, tmp_path), tok, "prompt_completion", 40, source=path)
    assert len(out) == 1 and out.dropped_rows == [2] and out.truncated == 1
    assert decoded_labels(tok, out[0]) == "ok<|im_end|>"


def test_every_row_truncated_away_is_an_error(tok):
    ds = datasets.Dataset.from_list([{"prompt": "p" * 50, "completion": "c"}])
    with pytest.raises(DataError, match="no row has a token left"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tokenize_sft(ds, tok, "prompt_completion", 10, source="x.jsonl")


def test_chat_needs_a_template_and_a_prefix_consistent_one(plain_tok, tmp_path):
    ds = datasets.Dataset.from_list(ROWS["chat"])
    with pytest.raises(DataError, match="needs a tokenizer with a chat template"):
        tokenize_sft(ds, plain_tok, "chat", 64, source="c.jsonl")
    # A template that renders differently once the conversation ends with the assistant.
    odd = make_tokenizer("{% if messages and messages[-1]['role'] == 'assistant' %}DONE{% endif %}"
                         + CHATML)
    with pytest.raises(DataError, match=r"c.jsonl row 1: the chat template does not render") as e:
        tokenize_sft(ds, odd, "chat", 512, source="c.jsonl")
    assert e.value.field == "messages[1]"
    assert len(tokenize_sft(ds, odd, "chat", 512, completion_only=False)) == 2


def test_pack_keeps_every_labelled_token(tok):
    ds = datasets.Dataset.from_list(ROWS["chat"] * 3)
    examples = tokenize_sft(ds, tok, "chat", 512)
    blocks = pack(examples, 16)
    assert all(0 < len(b["input_ids"]) <= 16 for b in blocks)
    # blocks of prompt tokens only are dropped (nothing to learn, NaN loss); every label is kept
    assert all(any(x != IGNORE for x in b["labels"]) for b in blocks)
    kept = [t for b in blocks for t in b["labels"] if t != IGNORE]
    assert kept == [t for ex in examples for t in ex["labels"] if t != IGNORE]
    flat = [t for ex in examples for t in ex["input_ids"]]
    starts = [i for i in range(0, len(flat), 16)]
    assert [b["input_ids"] for b in blocks] == [flat[i:i + 16] for i in starts if any(
        x != IGNORE for x in [t for ex in examples for t in ex["labels"]][i:i + 16])]
    assert all(b["attention_mask"] == [1] * len(b["input_ids"]) for b in blocks)
    joined = pack([{"input_ids": [1, 2], "labels": [1, 2]}, {"input_ids": [3], "labels": [3]}],
                  4, eos_token_id=9)
    assert joined == [{"input_ids": [1, 2, 9, 3], "labels": [1, 2, IGNORE, 3],
                       "attention_mask": [1, 1, 1, 1]}]


def test_classification_label_mapping(tok, tmp_path):
    ds = datasets.Dataset.from_list(ROWS["classification"])
    examples, names = tokenize_classification(ds, tok, "text", "label", 64)
    assert names == ["neg", "pos"] and [ex["labels"] for ex in examples] == [1, 0, 1]
    assert tok.decode(examples[0]["input_ids"]) == "great film"
    ints = datasets.Dataset.from_list([{"text": "a", "label": 2}, {"text": "b", "label": 0}])
    examples, names = tokenize_classification(ints, tok, "text", "label", 64)
    assert names == ["0", "1", "2"] and [ex["labels"] for ex in examples] == [2, 0]
    # CSV holds integers as text: they keep numeric order, as the same labels in JSONL would.
    path = write(tmp_path, [{"text": "a", "label": 10}, {"text": "b", "label": 2}], "csv")
    examples, names = tokenize_classification(load(path, tmp_path), tok, "text", "label", 64)
    assert names == [str(i) for i in range(11)] and [ex["labels"] for ex in examples] == [10, 2]
    # Eval rows reuse the training names, so a label means the same id in both.
    held_out = datasets.Dataset.from_list([{"text": "x", "label": "pos"}])
    assert tokenize_classification(held_out, tok, "text", "label", 64,
                                   label_names=["neg", "pos"])[0][0]["labels"] == 1
    with pytest.raises(DataError, match=r"e.jsonl row 1: field 'label' is 'meh', not one of the "
                                        r"labels \(neg, pos\)"):
        tokenize_classification(datasets.Dataset.from_list([{"text": "x", "label": "meh"}]), tok,
                                "text", "label", 64, source="e.jsonl", label_names=["neg", "pos"])
    with pytest.warns(UserWarning, match="1 of 2 rows were longer than max_seq_len=4"):
        examples, _ = tokenize_classification(ints.map(lambda r: {"text": r["text"] * 2 + "long"
                                                               if r["label"] else "b"}),
                                              tok, "text", "label", 4, source="c.jsonl")
    assert examples.truncated == 1 and len(examples[0]["input_ids"]) == 4


def test_preference_masks_the_prompt(tok, plain_tok):
    ds = datasets.Dataset.from_list(ROWS["preference"])
    for tokenizer, end in ((tok, "<|im_end|>"), (plain_tok, "<|im_end|>")):
        (ex, _) = tokenize_preference(ds, tokenizer, 512)
        assert set(ex) == {"chosen_input_ids", "chosen_labels", "rejected_input_ids",
                           "rejected_labels"}
        assert decoded_labels(tokenizer, ex, "chosen_") == "Hello" + end
        assert decoded_labels(tokenizer, ex, "rejected_") == "Go away" + end
        assert "Greet:" in tokenizer.decode(ex["chosen_input_ids"])
        assert ex["chosen_labels"][0] == IGNORE


def test_collate_pads_right(tok):
    sft = [{"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [IGNORE, 6, 7]},
           {"input_ids": [8], "attention_mask": [1], "labels": [8]}]
    batch = collate(sft, pad_token_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [8, IGNORE, IGNORE]]
    cls = collate([{"input_ids": [1], "labels": 2}, {"input_ids": [1, 3], "labels": 0}], 0)
    assert cls["labels"].tolist() == [2, 0] and cls["input_ids"].tolist() == [[1, 0], [1, 3]]
    ds = datasets.Dataset.from_list(ROWS["preference"])
    pad = ensure_pad_token(tok)
    batch = collate(tokenize_preference(ds, tok, 512), pad)
    for side in ("chosen_", "rejected_"):
        mask = batch[side + "attention_mask"]
        assert batch[side + "input_ids"].dtype == torch.long
        assert (batch[side + "input_ids"][mask == 0] == pad).all()
        assert (batch[side + "labels"][mask == 0] == IGNORE).all()
    with pytest.raises(ValueError, match="ensure_pad_token"):
        collate(sft, None)


def test_ensure_pad_token_uses_eos():
    tokenizer = make_tokenizer()
    assert tokenizer.pad_token is None
    assert ensure_pad_token(tokenizer) == tokenizer.eos_token_id == tokenizer.pad_token_id


def test_eval_split_is_deterministic(tmp_path):
    ds = datasets.Dataset.from_list([{"text": str(i)} for i in range(20)])
    train, held = eval_split(ds, 0.25, seed=3)
    again = eval_split(ds, 0.25, seed=3)
    assert list(held["text"]) == list(again[1]["text"]) and len(held) == 5 and len(train) == 15
    assert sorted(list(train["text"]) + list(held["text"]), key=int) == list(ds["text"])
    assert list(eval_split(ds, 0.25, seed=4)[1]["text"]) != list(held["text"])
    with pytest.raises(ValueError):
        eval_split(ds, 1.5, seed=0)
    with pytest.raises(DataError, match="cannot hold out 0.5 of 1 rows"):
        eval_split(ds.select([0]), 0.5, seed=0)


def test_examples_is_a_plain_list():
    ex = Examples([{"input_ids": [1]}], source="f.jsonl", truncated=1, dropped_rows=[4])
    assert ex == [{"input_ids": [1]}] and ex.truncated == 1 and ex.dropped_rows == [4]


@pytest.mark.slow
def test_smollm2_assistant_mask_is_the_answer_and_end_of_turn():
    from peftkit.models import load_tokenizer

    tokenizer = load_tokenizer("smollm2-135m-instruct")
    messages = [{"role": "user", "content": "Extract the city: Ana lives in Porto."},
                {"role": "assistant", "content": '{"city": "Porto"}'}]
    ds = datasets.Dataset.from_list([{"messages": messages}])
    (ex,) = tokenize_sft(ds, tokenizer, "chat", 512)
    assert tokenizer.decode(ex["input_ids"]) == tokenizer.apply_chat_template(messages, tokenize=False)
    assert decoded_labels(tokenizer, ex) == '{"city": "Porto"}<|im_end|>'
    prompt = tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    start = ex["labels"].index(next(t for t in ex["labels"] if t != IGNORE))
    assert tokenizer.decode(ex["input_ids"][:start]) == prompt


def test_iso_dates_in_json_stay_text(tmp_path):
    """arrow's JSON reader would read "2024-03-01" as a date; the rows keep the text as written."""
    from peftkit.train.data import load_rows, validate_rows

    path = tmp_path / "dates.jsonl"
    path.write_text('{"source": "1 March 2024", "target": "2024-03-01"}\n{"source": "2 May 1999", "target": "1999-05-02"}\n')
    rows = load_rows(path)
    assert rows["target"] == ["2024-03-01", "1999-05-02"]
    validate_rows(rows, "seq2seq", str(path))
