"""Bad rows of the new tasks' formats are named by file, row and field, before any model is loaded:
seq2seq (missing or empty fields), token_classification (tags that do not match the tokens, an eval
tag no training row uses, sub-word label alignment) and speech (unreadable audio, a wrong sampling
rate, a path relative to the data file)."""

from __future__ import annotations

import pytest
from tiny_assets import tiny_bert_dir, write_jsonl
from tiny_task_assets import color_rows, tiny_llava_dir, tiny_whisper_dir, tone_wav

from peftkit.train import data
from peftkit.train.config import RunConfig
from peftkit.train.data import DataError, load_rows, validate_rows
from peftkit.train.tasks import TASKS


def rows_of(tmp_path, rows, name="rows.jsonl"):
    path = write_jsonl(tmp_path / name, rows)
    return load_rows(path), str(path)


def test_seq2seq_rows_name_the_missing_and_empty_fields(tmp_path):
    rows, source = rows_of(tmp_path, [{"source": "a", "target": "b"}, {"source": "a", "target": " "},
                                      {"source": 3, "target": "b"}])
    with pytest.raises(DataError) as e:
        validate_rows(rows, "seq2seq", source)
    assert [(row, field) for row, field, _ in e.value.problems] == [(2, "target"), (3, "source")]
    assert "row 2: field 'target' is empty" in str(e.value)


def test_token_rows_need_one_tag_per_token(tmp_path):
    rows, source = rows_of(tmp_path, [{"tokens": ["Ada", "wrote"], "tags": ["B-PER"]},
                                      {"tokens": "Ada wrote", "tags": ["B-PER", "O"]}])
    with pytest.raises(DataError) as e:
        validate_rows(rows, "token_classification", source)
    assert "row 1: field 'tags' has 1 tags for 2 tokens" in str(e.value)
    assert "row 2: field 'tokens' is a string (expected a list of strings)" in str(e.value)


def cfg_for(task: str, model: str, fmt: str, max_seq_len: int = 32) -> RunConfig:
    return RunConfig(model={"name": model}, adapter={"method": "lora"}, data={"train": "t.jsonl", "format": fmt},
                     train={"task": task, "max_seq_len": max_seq_len})


def test_word_tags_label_the_first_sub_word_only(tmp_path):
    task = TASKS["token_classification"]
    cfg = cfg_for("token_classification", str(tiny_bert_dir(tmp_path)), "token_classification")
    rows, source = rows_of(tmp_path, [{"tokens": ["Ada", "is"], "tags": ["B-PER", "O"]}])
    tokenizer = task.load_processor(cfg)
    [example], names = task.examples(cfg, rows, tokenizer, source)
    assert names == ["B-PER", "O"]
    # the byte-level tokenizer gives one token per byte: "Ada" is 3 sub-words, "is" 2
    assert example["labels"] == [0, -100, -100, 1, -100]
    eval_rows, eval_source = rows_of(tmp_path, [{"tokens": ["Oslo"], "tags": ["B-LOC"]}], "eval.jsonl")
    with pytest.raises(DataError, match=r"eval.jsonl row 1: field 'tags' has 'B-LOC', which no training row uses"):
        task.examples(cfg, eval_rows, tokenizer, eval_source, names)


def test_speech_rows_name_unreadable_audio_and_wrong_rates(tmp_path):
    pytest.importorskip("soundfile")
    task = TASKS["speech_to_text"]
    cfg = cfg_for("speech_to_text", str(tiny_whisper_dir(tmp_path)), "speech")
    (tmp_path / "clips").mkdir()
    tone_wav(tmp_path / "clips" / "ok.wav", 440)
    tone_wav(tmp_path / "clips" / "slow.wav", 440, rate=8000)
    (tmp_path / "clips" / "text.wav").write_text("not audio")
    rows, source = rows_of(tmp_path, [{"audio": "clips/ok.wav", "text": "a"}, {"audio": "clips/slow.wav", "text": "b"},
                                      {"audio": "clips/text.wav", "text": "c"}, {"audio": "clips/none.wav", "text": "d"}])
    processor = task.load_processor(cfg)
    with pytest.raises(DataError) as e:
        task.examples(cfg, rows, processor, source)
    assert [(row, field) for row, field, _ in e.value.problems] == [(2, "audio"), (3, "audio"), (4, "audio")]
    assert "sampled at 8000 Hz; the model's feature extractor needs 16000 Hz" in str(e.value)
    [example], _ = task.examples(cfg, rows.select([0]), processor, source)  # read beside the data file
    assert tuple(example["input_features"].shape) == (16, 100)
    assert example["labels"][-1] == processor.tokenizer.eos_token_id
    assert processor.decoder_start not in example["labels"]


def test_the_new_formats_are_data_formats():
    assert {"seq2seq", "token_classification", "speech"} <= set(data.FORMATS)


def test_vision_rows_learn_the_last_answer_and_name_bad_images(tmp_path):
    task = TASKS["vision_sft"]
    cfg = cfg_for("vision_sft", str(tiny_llava_dir(tmp_path)), "vision_chat", max_seq_len=64)
    good = color_rows(tmp_path, 1)
    (tmp_path / "images" / "text.png").write_text("not an image")
    rows, source = rows_of(tmp_path, good + [{"images": ["images/text.png"], "messages": good[0]["messages"]},
                                             {"images": "images/0.png", "messages": good[0]["messages"]}])
    with pytest.raises(DataError, match=r"rows.jsonl row 3: field 'images' is a string"):
        task.validate_rows(rows, cfg, source)
    processor = task.load_processor(cfg)
    with pytest.raises(DataError, match=r"rows.jsonl row 2: field 'images' has a file that cannot be read"):
        task.examples(cfg, rows.select([0, 1]), processor, source)
    [example], _ = task.examples(cfg, rows.select([0]), processor, source)
    learned = [t for t in example["labels"] if t != -100]
    assert processor.tokenizer.decode(learned) == "red<|im_end|>\n"
    assert example["input_ids"].count(processor.tokenizer.convert_tokens_to_ids("<image>")) == 4
    short = cfg_for("vision_sft", cfg.model.name, "vision_chat", max_seq_len=len(example["input_ids"]) - 1)
    with pytest.raises(DataError, match="image tokens cannot be cut|raise max_seq_len"):
        task.examples(short, rows.select([0]), processor, source)
