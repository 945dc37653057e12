"""Scores computed by the libraries people report them with: sacrebleu (BLEU, chrF), rouge-score
(ROUGE-1/2/L), seqeval (entity precision/recall/F1) and jiwer (word error rate). Each library is
imported when its metric is asked for; :func:`missing_packages` tells the config checks beforehand
which are not installed (they come with ``pip install 'peftkit[tasks]'``).

>>> text_scores(["a cat"], ["a cat"], ["exact_match", "bleu"])  # doctest: +SKIP
{'exact_match': 1.0, 'bleu': 100.00000000000004}
"""

from __future__ import annotations

import importlib.util
from typing import Iterable

# (task, metric) -> the import name of the library that computes it; "*" stands for every task
_LIBRARIES = {("*", "bleu"): "sacrebleu", ("*", "chrf"): "sacrebleu", ("*", "rouge1"): "rouge_score",
              ("*", "rouge2"): "rouge_score", ("*", "rougeL"): "rouge_score", ("*", "wer"): "jiwer",
              ("token_classification", "f1"): "seqeval", ("token_classification", "precision"): "seqeval",
              ("token_classification", "recall"): "seqeval", ("speech_to_text", "loss"): "soundfile"}
_DISTRIBUTIONS = {"sacrebleu": "sacrebleu", "rouge_score": "rouge-score", "seqeval": "seqeval", "jiwer": "jiwer",
                  "soundfile": "soundfile"}
ROUGE = ("rouge1", "rouge2", "rougeL")


def missing_packages(task: str, metrics: Iterable[str]) -> list[tuple[str, str]]:
    """``(metric, pip package)`` for each metric of ``task`` whose library is not installed
    (``loss`` of speech_to_text stands for the audio reader):
    ``missing_packages("seq2seq", ["bleu"])`` -> ``[]`` once sacrebleu is installed."""
    missing = []
    for metric in ["loss", *metrics]:
        module = _LIBRARIES.get((task, metric)) or _LIBRARIES.get(("*", metric))
        if module and importlib.util.find_spec(module) is None:
            missing.append((metric, _DISTRIBUTIONS[module]))
    return missing


def exact_match(predictions: list[str], references: list[str]) -> float:
    """Share of predictions equal to their reference after trimming whitespace:
    ``exact_match(["a ", "b"], ["a", "c"])`` -> ``0.5``."""
    hits = sum(p.strip() == r.strip() for p, r in zip(predictions, references))
    return hits / max(len(references), 1)


def text_scores(predictions: list[str], references: list[str], metrics: Iterable[str]) -> dict[str, float]:
    """Generated texts against their references: ``exact_match`` (share, 0-1), ``bleu`` and ``chrf``
    (sacrebleu's corpus scores, 0-100, its default tokenization), ``rouge1/2/L`` (rouge-score's mean
    F-measure over the rows, 0-1, no stemming) and ``wer`` (jiwer's corpus word error rate):
    ``text_scores(["the cat"], ["the cat sat"], ["wer"])`` -> ``{"wer": 0.333...}``."""
    metrics = list(metrics)
    scores: dict[str, float] = {}
    if "exact_match" in metrics:
        scores["exact_match"] = exact_match(predictions, references)
    if {"bleu", "chrf"} & set(metrics):
        import sacrebleu

        if "bleu" in metrics:
            scores["bleu"] = float(sacrebleu.corpus_bleu(predictions, [references]).score)
        if "chrf" in metrics:
            scores["chrf"] = float(sacrebleu.corpus_chrf(predictions, [references]).score)
    wanted = [m for m in ROUGE if m in metrics]
    if wanted:
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer(wanted)
        rows = [scorer.score(r, p) for p, r in zip(predictions, references)]  # score(target, prediction)
        scores.update({m: sum(row[m].fmeasure for row in rows) / max(len(rows), 1) for m in wanted})
    if "wer" in metrics:
        import jiwer

        scores["wer"] = float(jiwer.wer(references, predictions))
    return scores


def entity_scores(predicted: list[list[str]], gold: list[list[str]], metrics: Iterable[str]) -> dict[str, float]:
    """Tag sequences scored as seqeval does by default (entities from IOB tags, conlleval rules):
    micro ``precision``, ``recall``, ``f1``, and word-level ``accuracy``:
    ``entity_scores([["B-PER", "O"]], [["B-PER", "O"]], ["f1"])`` -> ``{"f1": 1.0}``."""
    from seqeval import metrics as seq

    functions = {"precision": seq.precision_score, "recall": seq.recall_score, "f1": seq.f1_score,
                 "accuracy": seq.accuracy_score}
    kwargs = {"zero_division": 0}
    return {m: float(functions[m](gold, predicted, **({} if m == "accuracy" else kwargs)))
            for m in metrics if m in functions}
