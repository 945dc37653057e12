"""What ``peftkit eval``, ``generate`` and ``chat`` do with a trained adapter (``merge`` is in
:mod:`peftkit.train.export`).

Each command takes a run folder (``runs/<id>/``, whose final adapter is ``adapter/``) or any saved
adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``). The base model comes from
``--model``, else the run's ``config.yaml`` (``model.name``), else the adapter's
``base_model_name_or_path``; every failure names the path or field at fault (:class:`CommandError`).

>>> target = locate("runs/20261122-192453-quickstart-12785c")           # doctest: +SKIP
>>> model, tok = load_adapter_model(target)                             # doctest: +SKIP
>>> complete(model, tok, [chat_prompt(tok, [{"role": "user", "content": "Hi"}])], 32)  # doctest: +SKIP
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Optional, TextIO

import torch

from ..config import PeftConfig
from ..errors import PeftkitError
from ..progress import phase
from ..untrusted import read_json
from . import runs
from .prompting import PromptStyle, read_style

ADAPTER_CONFIG = "adapter_config.json"
TASKS_OF = {"CAUSAL_LM": "sft", "SEQ_CLS": "classification"}  # adapter task_type -> run task


class CommandError(PeftkitError):
    """A command cannot run on what it was given (the CLI prints it and exits with code 2)."""


@dataclass
class Target:
    """A saved adapter, and the run folder it belongs to (None for a stand-alone adapter)."""

    adapter_dir: str
    run_dir: Optional[str]
    config: PeftConfig

    @property
    def task_type(self) -> str:
        return str(getattr(self.config.task_type, "value", self.config.task_type) or "CAUSAL_LM")


def _is_run(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.yaml")) and os.path.isfile(os.path.join(path, "run.json"))


def _owning_run(adapter_dir: str) -> Optional[str]:
    """The run folder of ``<run>/adapter`` or ``<run>/checkpoints/step-N/adapter``, if any."""
    path = os.path.abspath(adapter_dir)
    for _ in range(3):
        path = os.path.dirname(path)
        if _is_run(path):
            return path
    return None


def locate(path: str) -> Target:
    """Resolve a run folder or an adapter folder to the adapter to load."""
    if not os.path.exists(path):
        raise CommandError(f"{path}: no such run or adapter folder")
    if not os.path.isdir(path):
        raise CommandError(f"{path}: is a file; give a run folder (runs/<id>) or an adapter folder "
                           f"(the one holding {ADAPTER_CONFIG})")
    if os.path.isfile(os.path.join(path, ADAPTER_CONFIG)):
        adapter_dir, run_dir = path, _owning_run(path)
    elif _is_run(path):
        adapter_dir, run_dir = os.path.join(path, "adapter"), path
        if not os.path.isfile(os.path.join(adapter_dir, ADAPTER_CONFIG)):
            raise CommandError(_no_adapter_message(path))
    else:
        raise CommandError(f"{path}: neither a run folder (no config.yaml and run.json) nor an adapter folder "
                           f"(no {ADAPTER_CONFIG})")
    try:
        config = PeftConfig.from_pretrained(adapter_dir)
    except (OSError, ValueError) as e:
        raise CommandError(f"{os.path.join(adapter_dir, ADAPTER_CONFIG)}: cannot be read: {e}") from None
    return Target(adapter_dir, run_dir, config)


def _no_adapter_message(run_dir: str) -> str:
    status = "unknown"
    try:
        status = str(runs.read_run_json(run_dir).get("status", status))
    except (OSError, ValueError):  # a damaged run.json (CorruptFileError is a ValueError): status unknown
        pass
    message = (f"run folder {run_dir} has no adapter: {os.path.join(run_dir, 'adapter', ADAPTER_CONFIG)} is missing "
               f"(run status: {status})")
    if status in ("running", "failed", "interrupted"):
        message += f"; finish the run with  peftkit train --resume {run_dir}"
    folder = os.path.join(run_dir, "checkpoints")
    steps = sorted(d for d in os.listdir(folder) if d.startswith("step-") and not d.endswith(".tmp")) \
        if os.path.isdir(folder) else []
    if steps:
        message += f", or use the newest checkpoint's adapter: {os.path.join(folder, steps[-1], 'adapter')}"
    return message


def run_config_path(target: Target) -> Optional[str]:
    return os.path.join(target.run_dir, "config.yaml") if target.run_dir else None


def run_model(target: Target) -> Optional[tuple[str, str, Any]]:
    """``(model.name, config path, model.quantization)`` from the run's config.yaml (the base is loaded
    as the run trained on it: quantized for a QLoRA run); None without a readable one (the adapter's own
    ``base_model_name_or_path`` is used then)."""
    path = run_config_path(target)
    if path is None:
        return None
    from .config import load_run_config

    try:
        model = load_run_config(path).model
    except (PeftkitError, OSError):  # e.g. its data files are gone: only the model section was wanted
        return None
    return model.name, path, model.quantization


def run_setting(run_dir: Optional[str], section: str, key: str) -> Any:
    """One value of a run's resolved ``config.yaml`` (None outside a run, or when it is unreadable:
    reading it must not need the run's data files, which may have moved)."""
    if not run_dir:
        return None
    from ..tracking.records import read_config

    return (read_config(run_dir).get(section) or {}).get(key)


def base_model_source(target: Target, model: Optional[str] = None,
                      run_model: Optional[tuple[str, str, Any]] = None) -> tuple[str, str]:
    """``(name, where it came from)``: ``--model``, the run config's ``model.name`` (``run_model`` is
    ``(name, config path, quantization)``), or the adapter's ``base_model_name_or_path``."""
    if model:
        return model, "--model"
    if run_model:
        return run_model[0], f"model.name in {run_model[1]}"
    name = target.config.base_model_name_or_path
    where = f"base_model_name_or_path in {os.path.join(target.adapter_dir, ADAPTER_CONFIG)}"
    if not name:
        raise CommandError(f"{where} is empty, so the base model is unknown; pass --model NAME_OR_PATH")
    return name, where


def label_names(target: Target) -> list[str]:
    """A classifier's label names: ``labels.json`` beside the adapter, else in the run's final adapter."""
    places = [target.adapter_dir] + ([os.path.join(target.run_dir, "adapter")] if target.run_dir else [])
    for folder in places:
        path = os.path.join(folder, "labels.json")
        if os.path.isfile(path):
            try:
                names = read_json(path)
            except (OSError, PeftkitError) as e:
                raise CommandError(f"{path}: cannot be read ({getattr(e, 'reason', None) or e})") from None
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise CommandError(f"{path}: must be a JSON list of label names")
            return names
    raise CommandError(f"{os.path.join(target.adapter_dir, 'labels.json')} is missing: a classification adapter "
                       "needs its label names (peftkit train writes them into the run's adapter folder)")


def pick_device(device: Optional[str] = None) -> str:
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def load_adapter_model(target: Target, model: Optional[str] = None, run_model: Optional[tuple[str, str, Any]] = None,
                       dtype: str = "float32", device: Optional[str] = None, revision: Optional[str] = None,
                       dequantize: bool = False):
    """The base model with the adapter loaded (inference mode), and its tokenizer; ``(model, tokenizer)``.
    A QLoRA run's base is quantized as in training (``model.quantization`` of its config), or, with
    ``dequantize``, loaded that way and then dequantized to ``dtype`` (the lossless merge base)."""
    from ..model import PeftModel
    from ..models import load_model, load_tokenizer
    from .data import ensure_pad_token

    name, where = base_model_source(target, model, run_model)
    revision = revision or target.config.revision
    extra: dict[str, Any] = {"revision": revision} if revision else {}
    if target.task_type == "SEQ_CLS":
        labels = label_names(target)
        extra.update(num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
    seed = run_setting(target.run_dir, "train", "seed")
    if target.task_type == "SEQ_CLS" and isinstance(seed, int):
        # a new classifier head is drawn as the run drew it, so that the base model (adapter disabled)
        # scores as it did at the run's step 0
        from accelerate.utils import set_seed

        set_seed(seed)
    try:
        with phase(f"loading {name} with the adapter {target.adapter_dir}"):
            tokenizer = load_tokenizer(name, **({"revision": revision} if revision else {}))
            quantization = run_model[2] if run_model and len(run_model) > 2 else None
            base = load_model(name, task_type=target.task_type, dtype=dtype, quantization=quantization, **extra)
            if quantization is not None and dequantize:
                from ..quantized.loading import dequantize_model

                dequantize_model(base, dtype)
    except (OSError, ImportError, ValueError) as e:  # FileNotFoundError, hub errors, missing package
        raise CommandError(f"base model {name!r} ({where}) cannot be loaded: {_first_line(e)}; "
                           "pass --model NAME_OR_PATH to use another") from None
    pad_id = ensure_pad_token(tokenizer)
    if getattr(base.config, "pad_token_id", None) is None:
        base.config.pad_token_id = pad_id
    peft_model = PeftModel.from_pretrained(base, target.adapter_dir)
    peft_model.to(pick_device(device)).eval()
    return peft_model, tokenizer


def load_path(path: str, model: Optional[str] = None, dtype: str = "float32", device: Optional[str] = None,
              causal_lm: bool = False):
    """:func:`load_adapter_model` for a run or adapter folder path: ``(model, tokenizer)``; with
    ``causal_lm``, refuse an adapter of another task type (a classifier cannot generate)."""
    target = locate(path)
    if causal_lm and target.task_type != "CAUSAL_LM":
        raise CommandError(f"task_type in {os.path.join(target.adapter_dir, ADAPTER_CONFIG)} is {target.task_type}: "
                           "only CAUSAL_LM adapters generate text (use peftkit eval for this one)")
    return load_adapter_model(target, model, run_model(target), dtype, device)


def prompt_style(path: str, out: Optional[TextIO] = None) -> PromptStyle:
    """How the adapter at ``path`` was prompted in training (:mod:`peftkit.train.prompting`); the
    tokenizer's template and no system prompt for an adapter outside a run. A note on ``out``
    (default stderr) says which system prompt is used and how to change it."""
    target = locate(path)
    style = read_style(target.adapter_dir, target.run_dir)
    if style and style.system:
        print(f"using the run's system prompt: {style.system[:100]!r}{'...' if len(style.system) > 100 else ''} "
              "(--system TEXT replaces it, --no-system drops it)", file=out or sys.stderr, flush=True)
    return style or PromptStyle()


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


# ---------------------------------------------------------------------------------------- generation
def chat_prompt(tokenizer: Any, messages: list[dict[str, str]], chat_template: Optional[str] = None) -> str:
    """The conversation rendered with ``chat_template`` (default: the tokenizer's), ready for the
    assistant's turn; without any template, ``User: ... / Assistant: ...`` lines."""
    template = chat_template or getattr(tokenizer, "chat_template", None)
    if template:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, chat_template=template)
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n".join(lines + ["Assistant:"])


@torch.no_grad()
def complete(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int, temperature: float = 0.0,
             top_p: float = 1.0, batch_size: int = 8, templated: Optional[bool] = None) -> list[str]:
    """Completions of rendered prompts: greedy when ``temperature`` is 0, else sampled. ``templated``
    says the prompts spell out their special tokens (default: the tokenizer has a chat template)."""
    if templated is None:
        templated = bool(getattr(tokenizer, "chat_template", None))
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {"do_sample": False}
    stops = _stop_ids(model, tokenizer)
    answers, side = [], tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for i in range(0, len(prompts), batch_size):
            enc = tokenizer(prompts[i:i + batch_size], return_tensors="pt", padding=True, add_special_tokens=not templated)
            enc = {k: v.to(model.device) for k, v in enc.items()}
            out = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=stops, **sampling)
            answers += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
    return [a.strip() for a in answers]


def _stop_ids(model: Any, tokenizer: Any) -> list[int]:
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = configured if isinstance(configured, list) else [configured]
    return [i for i in dict.fromkeys([*ids, tokenizer.eos_token_id]) if i is not None]


def generate(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int = 128, temperature: float = 0.0,
             top_p: float = 1.0, system: Optional[str] = None, raw: bool = False, out: Optional[TextIO] = None,
             seed: Optional[int] = None, style: Optional[PromptStyle] = None) -> list[str]:
    """Answer each prompt on its own and print them. Prompts are framed as in training (``style``:
    the run's template, system prompt and format; see :mod:`peftkit.train.prompting`); ``system``
    replaces the system prompt (``""`` drops it); ``raw`` sends the prompts as they are.

    Example:
        >>> run = "runs/20261122-192453-quickstart-12785c"
        >>> model, tok = load_path(run)                                                   # doctest: +SKIP
        >>> generate(model, tok, ["Ada Lovelace lives in London, ada@math.org."], style=prompt_style(run))  # doctest: +SKIP
    """
    out, style = out or sys.stdout, style or PromptStyle()
    if seed is not None:
        torch.manual_seed(seed)
    raw = raw or not style.templated
    rendered = prompts if raw else [chat_prompt(tokenizer, style.messages(p, system), style.chat_template) for p in prompts]
    answers = complete(model, tokenizer, rendered, max_new_tokens, temperature, top_p,
                       templated=not raw and bool(style.chat_template or getattr(tokenizer, "chat_template", None)))
    for prompt, answer in zip(prompts, answers):
        print(f">>> {prompt}\n{answer}\n", file=out, flush=True)
    return answers


def chat(model: Any, tokenizer: Any, lines: Optional[Iterable[str]] = None, max_new_tokens: int = 256, temperature: float = 0.0,
         top_p: float = 1.0, system: Optional[str] = None, out: Optional[TextIO] = None, interactive: bool = False,
         seed: Optional[int] = None, style: Optional[PromptStyle] = None) -> int:
    """A conversation, one user message a line: ``/reset`` starts over, ``/exit`` (or end of input) stops.
    Framed as in training (``style``; ``system`` replaces its system prompt, ``""`` drops it), as
    :func:`generate`. Returns the number of answers given."""
    lines, out = sys.stdin if lines is None else lines, out or sys.stdout
    if seed is not None:
        torch.manual_seed(seed)
    style = style or PromptStyle()
    head = style.head(system)
    history: list[dict[str, str]] = []
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if interactive:
        print("chat with the adapter; /reset starts over, /exit (or Ctrl-D) quits", file=out, flush=True)
    answered, lines = 0, iter(lines)
    while True:
        if interactive:
            print("you> ", end="", file=out, flush=True)
        try:
            line = next(lines, None)
        except KeyboardInterrupt:  # Ctrl-C at the prompt ends the chat too
            line = None
        if line is None:  # end of input
            if interactive:
                print(file=out)
            break
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            history.clear()
            print("(conversation reset)", file=out, flush=True)
            continue
        if text.startswith("/"):
            print(f"(unknown command {text.split()[0]}; /reset or /exit)", file=out, flush=True)
            continue
        history.append({"role": "user", "content": text})
        prompt = _fitting_prompt(tokenizer, head, history, limit, max_new_tokens, out, style.chat_template)
        answer = complete(model, tokenizer, [prompt], max_new_tokens, temperature, top_p,
                          templated=bool(style.chat_template or getattr(tokenizer, "chat_template", None)))[0]
        history.append({"role": "assistant", "content": answer})
        print(f"assistant> {answer}", file=out, flush=True)
        answered += 1
    return answered


def typed_lines() -> Iterator[str]:
    """Lines typed at a terminal, through ``input()`` (line editing and history via readline)."""
    try:
        import readline  # noqa: F401 - enables editing for input()
    except ImportError:
        pass
    while True:
        try:
            yield input()
        except EOFError:
            return


def _fitting_prompt(tokenizer: Any, head: list, history: list, limit: Optional[int], max_new_tokens: int, out: TextIO,
                    chat_template: Optional[str] = None) -> str:
    """Render the conversation; drop the oldest exchanges while it does not fit the model's context."""
    while True:
        prompt = chat_prompt(tokenizer, head + history, chat_template)
        if not limit or len(history) <= 1 or len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) + max_new_tokens <= limit:
            return prompt
        del history[:2]
        print("(the conversation outgrew the model's context; the oldest exchange was dropped)", file=out, flush=True)
