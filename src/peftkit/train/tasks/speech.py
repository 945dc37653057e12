"""``speech_to_text``: audio files to transcripts with a speech encoder-decoder (Whisper and other
``AutoModelForSpeechSeq2Seq`` models). Rows are ``{"audio": "clips/1.wav", "text": "..."}`` (the
transcript field is ``data.text_field``); a relative audio path is read from the data file's folder.
Files are read with soundfile (wav, flac, ogg), mixed down to mono, and must already have the
feature extractor's sampling rate (no silent resampling). The model's feature extractor turns them
into input features; the decoder learns the transcript. The metric is jiwer's word error rate.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import torch

from .. import data
from .base import ModelTask
from .metrics import text_scores
from .seq2seq import generate_texts


class SpeechProcessor:
    """The model's feature extractor and tokenizer, loaded separately (a model folder need not hold a
    combined processor class), and the decoder's start token, which labels leave out."""

    def __init__(self, feature_extractor: Any, tokenizer: Any, decoder_start: Optional[int] = None):
        self.feature_extractor, self.tokenizer, self.decoder_start = feature_extractor, tokenizer, decoder_start


class SpeechToTextTask(ModelTask):
    """Audio/transcript rows for ``AutoModelForSpeechSeq2Seq``.

    Example:
        >>> examples, _ = SpeechToTextTask().examples(cfg, rows, processor, "asr.jsonl")  # doctest: +SKIP
        >>> examples[0]["input_features"].shape
        torch.Size([80, 3000])
    """

    name = "speech_to_text"

    def load_processor(self, cfg: Any) -> SpeechProcessor:
        from transformers import AutoFeatureExtractor

        from ...models import resolve_model
        from ..model_check import load_model_config

        tokenizer = super().load_processor(cfg)
        kwargs = {"revision": cfg.model.revision} if cfg.model.revision else {}
        extractor = AutoFeatureExtractor.from_pretrained(resolve_model(cfg.model.name).name_or_path, **kwargs)
        start = getattr(load_model_config(cfg.model.name, cfg.model.revision), "decoder_start_token_id", None)
        return SpeechProcessor(extractor, tokenizer, start)

    def examples(self, cfg: Any, rows: Any, processor: Any, source: str,
                 label_names: Optional[list[str]] = None) -> tuple[list, list[str]]:
        import soundfile

        extractor = processor.feature_extractor
        rate, folder = extractor.sampling_rate, os.path.dirname(os.path.abspath(os.path.expanduser(source)))
        out, problems = [], []
        for index, row in enumerate(rows):
            path = os.path.join(folder, os.path.expanduser(row["audio"]))
            try:
                audio, found = soundfile.read(path, dtype="float32", always_2d=True)
            except (OSError, RuntimeError, soundfile.LibsndfileError) as e:  # missing, unreadable, not audio
                problems.append((index, "audio", f"field 'audio' is {row['audio']!r}, which cannot be read as audio ({e})"))
                continue
            if found != rate:
                problems.append((index, "audio", f"field 'audio' is {row['audio']!r}, sampled at {found} Hz; the "
                                                 f"model's feature extractor needs {rate} Hz (resample the file)"))
                continue
            features = extractor(audio.mean(axis=1), sampling_rate=rate, return_tensors="pt")["input_features"][0]
            out.append({"input_features": features, "labels": self._labels(cfg, processor, row)})
        if problems:
            data._fail(source, problems, "audio rows")
        return data.Examples(out, source=source), []

    def _labels(self, cfg: Any, processor: SpeechProcessor, row: dict) -> list[int]:
        """The transcript's token ids with the end token; the decoder's start token is left out
        (Whisper's tokenizer writes it first; the model puts it in front when it shifts the labels)."""
        tokenizer = processor.tokenizer
        ids = tokenizer(row[cfg.data.text_field])["input_ids"]
        if processor.decoder_start is not None and ids[:1] == [processor.decoder_start]:
            ids = ids[1:]
        eos = tokenizer.eos_token_id
        ids = ids + [eos] if eos is not None and ids[-1:] != [eos] else ids
        return ids[: cfg.train.max_seq_len]

    def collate(self, processor: Any):
        pad = processor.tokenizer.pad_token_id

        def collate(examples: list[dict]) -> dict[str, torch.Tensor]:
            labels = data.collate([{"input_ids": ex["labels"], "labels": ex["labels"]} for ex in examples], pad)
            return {"input_features": torch.stack([ex["input_features"] for ex in examples]),
                    "labels": labels["labels"]}

        return collate

    def eval_texts(self, cfg: Any, rows: Any) -> tuple[list[str], list[str]]:
        return list(rows["audio"]), list(rows[cfg.data.text_field])

    def scores(self, model: Any, prep: Any, cfg: Any, batches: list[dict]) -> dict[str, float]:
        wanted = [m for m in cfg.eval.metrics if m != "loss"]
        if not wanted:
            return {}
        prep.predictions = generate_texts(model, prep.tokenizer.tokenizer, batches, cfg.eval.max_new_tokens)
        return text_scores(prep.predictions, [r.strip() for r in prep.eval_references], wanted)
