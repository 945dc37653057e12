"""``peftkit merge``: fold an adapter into its base model and write a plain ``transformers`` model folder
(``config.json``, ``model.safetensors``, the tokenizer), which ``AutoModelForCausalLM.from_pretrained``
loads with neither peftkit nor ``peft`` installed.

The folder is written to a temporary sibling and renamed into place only after the reloaded model's
logits were checked against the adapter model's, so a failed merge leaves nothing half-written.

A QLoRA run (``model.quantization`` in its config) is exported the lossless way, by default in
bfloat16: its base is loaded quantized as in training, dequantized (the adapter was trained against
exactly those weights), and the adapter merged there in float32. Merging into the 4-bit weights
instead would re-quantize them and lose most of the adapter (see :mod:`peftkit.quantized.merging`).

>>> report = merge_adapter("runs/20261122-192453-quickstart-12785c", "out/merged")  # doctest: +SKIP
>>> report["max_abs_diff"] < 1e-4                                                    # doctest: +SKIP
True
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from typing import Any, Optional, TextIO

import torch

from ..checkpoint import os_error_in
from ..progress import phase
from .commands import CommandError, load_adapter_model, locate, run_model

PROBE = "The quick brown fox jumps over the lazy dog. 0123456789 {\"name\": \"Ada\"}"
# float32: a larger gap than max(1e-3, 1e-4 * the largest logit) means the merge went wrong
# (measured on SmolLM2-135M with an r=16 all-linear adapter: 1.8e-4, logits up to ~25)


def merge_adapter(path: str, out_dir: str, model: Optional[str] = None, dtype: Optional[str] = None,
                  force: bool = False, check: bool = True, device: Optional[str] = None,
                  out: Optional[TextIO] = None) -> dict[str, Any]:
    """Merge the adapter of a run (or an adapter folder) into its base model and save it to ``out_dir``
    in ``dtype`` (default: float32, bfloat16 for a QLoRA run)."""
    out = out or sys.stdout
    target = locate(path)
    _check_out_dir(out_dir, target.adapter_dir, force)
    source = run_model(target)
    quantized = bool(source and source[2] is not None)
    dtype = dtype or ("bfloat16" if quantized else "float32")
    peft_model, tokenizer = load_adapter_model(target, model=model, run_model=source, dtype="float32",
                                               device=device, dequantize=True)
    if quantized:
        print(f"{target.adapter_dir} was trained on a {source[2].bits}-bit base: merging into its dequantized "
              f"weights (lossless) and writing {dtype}", file=out)
    probe = tokenizer([PROBE], return_tensors="pt").to(peft_model.device)
    with torch.no_grad():
        expected = _logits(peft_model, probe)
    with phase("merging the adapter into the base weights"):
        merged = peft_model.merge_and_unload()
        plain(merged)
    if dtype != "float32":
        from ..models import _torch_dtype

        merged = merged.to(_torch_dtype(dtype))
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(out_dir))}.merging-", dir=parent)
    try:
        with phase(f"writing the merged model{' and checking it reloads to the same logits' if check else ''}"):
            merged.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            diff = _reload_diff(tmp, target.task_type, probe, expected) if check else None
        tolerance = max(1e-3, 1e-4 * float(expected.abs().max()))
        if diff is not None and dtype == "float32" and diff > tolerance:
            raise CommandError(f"the merged model's logits differ from the adapter model's by {diff:.3g} "
                               f"(more than {tolerance:.3g}); nothing was written to {out_dir}")
        _share(tmp)
        _move_into_place(tmp, out_dir)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        error = None if isinstance(e, OSError) else os_error_in(e, out_dir)
        if error is not None:  # a full disk reported by safetensors inside transformers' save_pretrained
            raise error from None
        raise
    print(f"merged {target.adapter_dir} into its base model; wrote {out_dir} ({dtype})", file=out)
    if diff is not None:
        print(f"max abs logit diff, reloaded merged model vs adapter model: {diff:.3g}", file=out)
    return {"out_dir": out_dir, "max_abs_diff": diff, "files": sorted(os.listdir(out_dir))}


def _check_out_dir(out_dir: str, adapter_dir: str, force: bool) -> None:
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise CommandError(f"--out {out_dir} is a file; give a folder")
    real_out, real_adapter = os.path.realpath(out_dir), os.path.realpath(adapter_dir)
    if real_adapter == real_out or real_adapter.startswith(real_out + os.sep):
        raise CommandError(f"--out {out_dir} holds the adapter {adapter_dir}; write the merged model elsewhere")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not force:
        raise CommandError(f"--out {out_dir} is not empty ({len(os.listdir(out_dir))} entries); choose an empty or new "
                           "folder, or pass --force to replace it")


def plain(model: torch.nn.Module) -> torch.nn.Module:
    """Drop quantizer state that a GGUF (or other quantized) load leaves on a model whose weights are now
    plain tensors, so ``save_pretrained`` writes it as an ordinary model; untie the output head if the merge
    gave it its own weight."""
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    for attr in ("is_quantized", "quantization_method"):
        if attr in vars(model):
            delattr(model, attr)
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    inputs, outputs = model.get_input_embeddings(), model.get_output_embeddings()
    if getattr(model.config, "tie_word_embeddings", False) and inputs is not None and outputs is not None \
            and outputs.weight is not inputs.weight:
        model.config.tie_word_embeddings = False  # else from_pretrained would tie them again
    return model


def _logits(model: Any, probe: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(**probe).logits.float().cpu()


def _reload_diff(folder: str, task_type: str, probe: dict[str, torch.Tensor], expected: torch.Tensor) -> float:
    """Load the written folder with plain transformers and compare its logits with the adapter model's."""
    import transformers

    from ..models import TASK_TYPE_TO_AUTO_CLASS

    auto = getattr(transformers, TASK_TYPE_TO_AUTO_CLASS.get(task_type, "AutoModelForCausalLM"))
    reloaded = auto.from_pretrained(folder).eval()  # the dtype it was saved in
    with torch.no_grad():
        got = _logits(reloaded, {k: v.cpu() for k, v in probe.items()})
    return float((got - expected).abs().max())


def _share(folder: str) -> None:
    """mkdtemp makes a 0700 folder and safetensors 0600 files: give them the usual umask permissions."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~umask)


def _move_into_place(tmp: str, out_dir: str) -> None:
    """Rename the finished folder to ``out_dir``; an existing one (empty, or replaced with --force) goes
    only after the new one is in place."""
    old = None
    if os.path.exists(out_dir):
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(out_dir))}.old-",
                               dir=os.path.dirname(os.path.abspath(out_dir)))
        os.rmdir(old)
        os.rename(out_dir, old)
    try:
        os.rename(tmp, out_dir)
    except BaseException:
        if old:
            os.rename(old, out_dir)
        raise
    if old:
        shutil.rmtree(old, ignore_errors=True)
