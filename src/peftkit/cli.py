"""The ``peftkit`` command line. Each sub-command is a small function; ``peftkit --help`` lists them.
The work of ``eval``, ``generate``, ``chat`` and ``merge`` is in :mod:`peftkit.train.commands`,
:mod:`peftkit.train.evaluation` and :mod:`peftkit.train.export`.

Example:
    $ peftkit generate runs/<id> --prompt "Hello"
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from typing import Iterator, Optional

from . import __version__
from .errors import PeftkitError


def _inspect(args: argparse.Namespace) -> int:
    """Show a model's modules, which of them ``--target-modules`` adapts, and the trainable count."""
    from .config import TaskType
    from .errors import PeftkitError
    from .methods.lora import LoraConfig
    from .model import get_peft_model
    from .models import load_model
    from .targets import find_targets, iter_plain_modules

    model = load_model(args.model, task_type=args.task_type)
    total = sum(p.numel() for p in model.parameters())
    print(f"{type(model).__name__}: {total:,d} parameters")
    if args.target_modules is None:
        kinds: dict[str, list[str]] = {}
        for key, module in iter_plain_modules(model):
            if not list(module.children()):
                kinds.setdefault(type(module).__name__, []).append(key.rsplit(".", 1)[-1])
        for kind, names in sorted(kinds.items()):
            print(f"  {kind:<24} {len(names):>5}  e.g. {', '.join(sorted(set(names))[:8])}")
        print("Pass --target-modules (names, a regex or 'all-linear') to see what an adapter would adapt.")
        return 0
    # one value that is 'all-linear' or flagged as a regex is a string; anything else a list of names
    single = len(args.target_modules) == 1 and (args.regex or args.target_modules[0] == "all-linear")
    targets = args.target_modules[0] if single else args.target_modules
    try:
        config = LoraConfig(r=args.r, target_modules=targets, task_type=TaskType(args.task_type))
        keys = find_targets(model, config)
        peft_model = get_peft_model(model, config)
    except PeftkitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for key in keys:
        print(f"  adapts {key}")
    trainable, total = peft_model.get_nb_trainable_parameters()
    print(f"{len(keys)} modules; LoRA r={args.r}: {trainable:,d} trainable of {total:,d} ({100 * trainable / total:.3f}%)")
    return 0


def _train(args: argparse.Namespace) -> int:
    """Run a YAML config (``key=value`` overrides after it) into a tracked run folder."""
    from .errors import PeftkitError
    from .train.runner import train_from_config

    if not args.config and not args.resume and not args.from_run:
        print("error: give a CONFIG file, --from-run RUN or --resume RUN_DIR", file=sys.stderr)
        return 2
    if args.resume and (args.sweep or args.from_run):
        print("error: --resume continues one run as it was; it does not go with --sweep or --from-run", file=sys.stderr)
        return 2
    overrides = list(args.overrides)
    config = args.config
    if config and "=" in config and not os.path.exists(config):  # `peftkit train --resume R key=value`
        overrides, config = [config, *overrides], None
    try:
        from .tracking import commands as tracking

        if args.from_run:
            config, overrides = tracking.from_run_config(config, overrides, args.from_run)
        if args.sweep:
            return tracking.train_sweep(config, overrides, args.sweep)
        run_dir = train_from_config(config, overrides, resume=args.resume)
    except KeyboardInterrupt:
        print("\ninterrupted: a checkpoint was saved; continue with  peftkit train --resume RUN_DIR", file=sys.stderr)
        return 130
    except PeftkitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if os.environ.get("RANK", "0") == "0":  # under accelerate launch, one summary, from the main process
        _print_summary(run_dir)
    return 0


def _print_summary(run_dir: str, failures: int = 5) -> None:
    """Eval scores before (step 0, if measured) and after training, with the counts they stand for
    (``exact_match 0.95 (19/20)``), and the rows the adapter still gets wrong: expected and got."""
    from .train import runs
    from .train.summary import failing_rows_text, scores_line
    from .untrusted import read_json

    info = runs.read_run_json(run_dir)
    evals = [r for r in runs.read_metrics(run_dir) if any(k.startswith("eval_") for k in r) and not r.get("final")]
    print(f"\nrun finished: {run_dir}\nadapter: {os.path.join(run_dir, 'adapter')}")
    start = "start" if info.get("parent_adapter") else "base model"  # --from-run: the parent's
    for label, record in ((start, evals[0] if evals and evals[0]["step"] == 0 else None),
                          (f"step {evals[-1]['step']}" if evals else "", evals[-1] if evals else None)):
        if record:
            scores = {k: v for k, v in record.items() if k.startswith("eval_")}
            print(f"{label:>11}: {scores_line(scores, info.get('eval_size'))}")
    path = os.path.join(run_dir, "eval_predictions.json")
    if os.path.exists(path):
        text = failing_rows_text(read_json(path), failures)  # written just now by this run
        if text:
            print(f"{text}\n(every prediction: {path})")


def _validate(args: argparse.Namespace) -> int:
    """Check a run config, its model (config only, no weights) and its data without running it; every
    problem is listed (exit code 2 if any). ``--explain KEY`` prints what a key means instead (its
    type, default and allowed values)."""
    from .train.model_check import validate_run

    if args.explain:
        return _explain(args.explain)
    if not args.config:
        print("error: give a run config to check (peftkit validate run.yaml), or --explain KEY", file=sys.stderr)
        return 2

    problems = validate_run(args.config, args.overrides)
    if not problems:
        print(f"{args.config}: OK")
        return 0
    print(f"{args.config}: {len(problems)} problem(s)", file=sys.stderr)
    for path, msg in problems:
        print(f"  - {path}: {msg}" if path else f"  - {msg}", file=sys.stderr)
    return 2


def _explain(keys: list[str]) -> int:
    from .train.config_reference import explain

    for key in keys:
        print(explain(key))
    return 0


def _config(args: argparse.Namespace) -> int:
    """``config schema``: the run config's JSON Schema (``--markdown``: the reference page);
    ``config explain KEY``: one key."""
    from .train.config_reference import json_schema_text, markdown

    if args.action == "explain":
        if not args.keys:
            print("error: name a key, e.g. peftkit config explain train.lr (or a section: train)", file=sys.stderr)
            return 2
        return _explain(args.keys)
    print(markdown() if args.markdown else json_schema_text(), end="")
    return 0


def _guarded(work):
    """Run a command's work; a peftkit error becomes ``error: ...`` and exit code 2."""
    try:
        work()
    except PeftkitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _eval(args: argparse.Namespace) -> int:
    """Score a run's adapter (``--base``: and the base model) on eval data; write eval_results.json."""
    from .train.evaluation import evaluate_adapter

    return _guarded(lambda: evaluate_adapter(args.path, config=args.config, data_path=args.data, metrics=args.metrics,
                                             overrides=args.overrides, base=args.base, model=args.model,
                                             device=args.device, out_path=args.out))


def _talk(args: argparse.Namespace) -> int:
    """``generate``: answer each ``--prompt``; ``chat``: a conversation read from stdin, a message a line."""
    from .train import commands as c

    def work():
        model, tok = c.load_path(args.path, args.model, args.dtype, args.device, causal_lm=True)
        raw = getattr(args, "raw", False)
        style = None if raw else c.prompt_style(args.path)  # the run's template, system prompt, format
        options = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                       system="" if args.no_system else args.system, seed=args.seed, style=style)
        if args.command == "generate":
            c.generate(model, tok, args.prompt, raw=raw, **options)
        else:
            tty = sys.stdin.isatty()
            c.chat(model, tok, c.typed_lines() if tty else _text_lines(sys.stdin), interactive=tty, **options)
    return _guarded(work)


def _classify(args: argparse.Namespace) -> int:
    """``classify``: the label of each ``--text`` (or each line of stdin) from a classification run."""
    from .train.classify import load_classifier, print_labels

    def work():
        model, tok, labels, max_len = load_classifier(args.path, args.model, args.device)
        print_labels(model, tok, args.text or _text_lines(sys.stdin), labels, max_len)
    return _guarded(work)


def _text_lines(stream) -> Iterator[str]:
    """Lines of piped input as UTF-8, bytes that are not UTF-8 shown as U+FFFD (never a crash)."""
    buffer = getattr(stream, "buffer", None)
    return io.TextIOWrapper(buffer, encoding="utf-8", errors="replace") if buffer is not None else stream


def _merge(args: argparse.Namespace) -> int:
    """Merge the adapter into its base model; write a plain transformers folder to --out."""
    from .train.export import merge_adapter

    return _guarded(lambda: merge_adapter(args.path, args.out, model=args.model, dtype=args.dtype, force=args.force,
                                          check=not args.no_check, device=args.device))


def _combine(args: argparse.Namespace) -> int:
    """Combine trained adapters as a combine.yaml says; the result is a new run."""
    from .train.combine import combine_from_file

    return _guarded(lambda: combine_from_file(args.config, evaluate=args.eval))


def _adapter_args(p: argparse.ArgumentParser, dtype: bool = True) -> None:
    p.add_argument("path", metavar="RUN_OR_ADAPTER", help="a run folder (runs/<id>, its final adapter/) or an adapter folder")
    p.add_argument("--model", help="base model (bundled name, local path or HF id); default: the run config's "
                                   "model.name, else the adapter's base_model_name_or_path")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    if dtype:
        p.add_argument("--dtype", default="float32", choices=DTYPES, help="dtype to load the base model in (default float32)")


def _sampling_args(p: argparse.ArgumentParser, max_new_tokens: int) -> None:
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens, help=f"default {max_new_tokens}")
    p.add_argument("--temperature", type=float, default=0.0, help="0 (default) decodes greedily; > 0 samples")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling when --temperature > 0 (default 1.0)")
    p.add_argument("--system", help="the system message before the conversation (default: the one the run's "
                                    "training rows share, if any)")
    p.add_argument("--no-system", action="store_true", help="no system message, not even the run's")
    p.add_argument("--seed", type=int, help="random seed for sampling")


DTYPES = ("float32", "bfloat16", "float16")


def _add_adapter_commands(sub) -> None:
    p = sub.add_parser("eval", help="score a run's adapter on eval data (and the base model with --base)",
                       description="Evaluate RUN_DIR's final adapter (or an adapter folder) with the metrics of its run "
                                   "config; print them and write eval_results.json into the run (or adapter) folder.")
    _adapter_args(p, dtype=False)
    p.add_argument("overrides", nargs="*", help="dotted run-config overrides, e.g. eval.num_examples=20")
    p.add_argument("--config", metavar="RUN.yaml", help="take data and metrics from this run config instead of the run's")
    p.add_argument("--data", metavar="FILE", help="evaluate on this file (same format as the run's data) instead")
    p.add_argument("--metrics", nargs="+", choices=("loss", "exact_match", "accuracy", "f1"), help="metrics to compute")
    p.add_argument("--base", action="store_true", help="also score the base model (adapter disabled) for comparison")
    p.add_argument("--out", metavar="FILE", help="where to write the results (default: <run>/eval_results.json)")
    p.set_defaults(func=_eval)

    p = sub.add_parser("generate", help="answer prompts with an adapter",
                       description="Generate an answer to each --prompt, framed as the run's training rows were: "
                                   "its chat template, its system prompt and its data format (see --system, "
                                   "--no-system, --raw).")
    _adapter_args(p)
    p.add_argument("--prompt", action="append", required=True, help="a user message; repeat for several")
    p.add_argument("--raw", action="store_true", help="send the prompts as they are, without the chat template")
    _sampling_args(p, 128)
    p.set_defaults(func=_talk)

    p = sub.add_parser("chat", help="talk to an adapter (one message a line on stdin)",
                       description="Interactive chat that keeps the conversation; type /reset to start over and "
                                   "/exit (or Ctrl-D) to quit. Reads piped input too: one message a line.")
    _adapter_args(p)
    _sampling_args(p, 256)
    p.set_defaults(func=_talk)

    p = sub.add_parser("classify", help="label texts with a classification run's adapter",
                       description="Print 'label  probability  text' for each --text, or for each line of stdin, "
                                   "tokenized as the run was (its max_seq_len, its label names).")
    _adapter_args(p, dtype=False)
    p.add_argument("--text", action="append", help="a text to classify; repeat for several (default: read stdin)")
    p.set_defaults(func=_classify)

    p = sub.add_parser("merge", help="fold an adapter into its base model: a plain transformers folder",
                       description="Load base + adapter, merge_and_unload(), and save a transformers model folder "
                                   "(safetensors) with the tokenizer; checks the reloaded logits against the adapter model.")
    _adapter_args(p, dtype=False)
    p.add_argument("--out", required=True, metavar="DIR", help="the folder to write (must be new or empty)")
    p.add_argument("--dtype", default=None, choices=DTYPES,
                   help="dtype of the saved weights (merged in float32); default float32, and bfloat16 for a QLoRA run "
                        "(its quantized base is dequantized and merged there: lossless)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")
    p.add_argument("--no-check", action="store_true", help="skip reloading the merged folder to compare logits")
    p.set_defaults(func=_merge)

    p = sub.add_parser("combine", help="combine trained adapters (weights, ties, dare, svd...) into a new run",
                       description="Read COMBINE.yaml (adapters, weights, combination_type, density, svd_rank, output) "
                                   "and write the weighted combination as a new run whose lineage lists every parent; "
                                   "see docs/adapter-arithmetic.md.")
    p.add_argument("config", metavar="COMBINE.yaml", help="the combination to make")
    p.add_argument("--eval", action="store_true", help="score the result on each parent run's eval data")
    p.set_defaults(func=_combine)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="peftkit", description="Parameter-efficient fine-tuning, peft-compatible.")
    parser.add_argument("--version", action="version", version=f"peftkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="list a model's modules and what target_modules would adapt")
    p.add_argument("model", help="bundled name (smollm2-135m-instruct, minilm-l6), HF id or local path")
    p.add_argument("--target-modules", nargs="+", help="module names, 'all-linear', or a regex with --regex")
    p.add_argument("--regex", action="store_true", help="treat the single --target-modules value as a regex")
    p.add_argument("--r", type=int, default=8, help="LoRA rank for the trainable-parameter count (default 8)")
    p.add_argument("--task-type", default="CAUSAL_LM", help="CAUSAL_LM, SEQ_CLS, ... (picks the model class)")
    p.set_defaults(func=_inspect)

    p = sub.add_parser("train", help="fine-tune from a YAML run config into a tracked run folder")
    p.add_argument("config", nargs="?", help="run config (YAML)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. adapter.r=8 train.max_steps=100")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a killed or interrupted run from its newest checkpoint")
    p.add_argument("--sweep", action="append", metavar="KEY=V1,V2", help="train every point of the grid, one run each "
                                                                       "(repeat for more keys), e.g. adapter.r=8,16,32")
    p.add_argument("--from-run", metavar="RUN", help="start from RUN's adapter (sets adapter.from; RUN becomes the "
                                                     "parent); without CONFIG, RUN's own config is used")
    p.set_defaults(func=_train)

    p = sub.add_parser("validate", help="check a run config against its model (config only, no weights) and data; list every problem (exit code 2 if any)")
    p.add_argument("config", nargs="?", help="run config (YAML)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, checked too")
    p.add_argument("--explain", action="append", metavar="KEY", help="print what a run-config key (train.lr, "
                   "adapter.r) or section (train) means: type, default, allowed values; repeatable")
    p.set_defaults(func=_validate)

    p = sub.add_parser("config", help="the run-config reference: JSON Schema for editors, or one key explained",
                       description="peftkit config schema > run-config.schema.json  |  peftkit config schema "
                                   "--markdown  |  peftkit config explain train.lr  (docs/run-config.md)")
    p.add_argument("action", choices=("schema", "explain"))
    p.add_argument("keys", nargs="*", metavar="KEY", help="for explain: dotted keys or section names")
    p.add_argument("--markdown", action="store_true", help="for schema: the Markdown reference instead of JSON")
    p.set_defaults(func=_config)
    _add_adapter_commands(sub)
    from .serve.cli import add_parser as add_serve_parser
    from .tracking.commands import add_parser as add_runs_parser

    add_runs_parser(sub)
    add_serve_parser(sub)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of the ``peftkit`` console script."""
    from .tracking.commands import join_sort_argument

    parser = build_parser()
    args, extra = parser.parse_known_args(join_sort_argument(sys.argv[1:] if argv is None else list(argv)))
    if extra:  # `train run.yaml --sweep k=1,2 train.lr=1e-4`: overrides after an option are overrides too
        if args.command == "train" and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except PeftkitError as e:  # commands that do not turn their own errors into error lines
        print(f"error: {e}", file=sys.stderr)
    except OSError as e:  # the file system said no (full disk, no permission, a file in the way)
        print(f"error: {os_error_text(e)}", file=sys.stderr)
    except Exception as e:  # a library's own error type for an OS failure (safetensors: "os error 28")
        from .checkpoint import os_error_in

        if os_error_in(e) is None:
            raise
        print(f"error: {os_error_text(os_error_in(e))} ({type(e).__name__}: {e})", file=sys.stderr)
    return 2


def os_error_text(error: OSError) -> str:
    """An OS error as one line naming the file(s) it concerns, e.g. ``runs/x/state.json: No space left
    on device``."""
    why = error.strerror or str(error) or type(error).__name__
    files = [str(f) for f in (error.filename, error.filename2) if f is not None]
    return f"{' -> '.join(files)}: {why}" if files else why


if __name__ == "__main__":
    sys.exit(main())
