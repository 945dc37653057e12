"""The ``peftkit`` command line. Each sub-command is a small function; ``peftkit --help`` lists them.

Example:
    $ peftkit inspect smollm2-135m-instruct --target-modules all-linear
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

from . import __version__


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

    if not args.config and not args.resume:
        print("error: give a CONFIG file, or --resume RUN_DIR", file=sys.stderr)
        return 2
    overrides = list(args.overrides)
    config = args.config
    if config and "=" in config and not os.path.exists(config):  # `peftkit train --resume R key=value`
        overrides, config = [config, *overrides], None
    try:
        run_dir = train_from_config(config, overrides, resume=args.resume)
    except KeyboardInterrupt:
        print("\ninterrupted: a checkpoint was saved; continue with  peftkit train --resume RUN_DIR", file=sys.stderr)
        return 130
    except PeftkitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    _print_summary(run_dir)
    return 0


def _print_summary(run_dir: str, examples: int = 3) -> None:
    """Eval metrics before (step 0, if measured) and after training, and a few generated answers."""
    import json

    from .train import runs

    evals = [r for r in runs.read_metrics(run_dir) if any(k.startswith("eval_") for k in r)]
    print(f"\nrun finished: {run_dir}\nadapter: {os.path.join(run_dir, 'adapter')}")
    for label, record in (("base model", evals[0] if evals and evals[0]["step"] == 0 else None),
                          ("fine-tuned", evals[-1] if evals else None)):
        if record:
            scores = ", ".join(f"{k[5:]}={v:.4g}" for k, v in record.items() if k.startswith("eval_"))
            print(f"{label:>11}: {scores}")
    path = os.path.join(run_dir, "eval_predictions.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            rows = json.load(f)
        for row in rows[:examples]:
            mark = "ok " if row["prediction"].strip() == row["reference"].strip() else "bad"
            print(f"  [{mark}] {row['prediction'].strip()}")


def _validate(args: argparse.Namespace) -> int:
    """Check a run config without running it; every problem is listed (exit code 2 if any)."""
    from .train.config import validate_file

    problems = validate_file(args.config, args.overrides)
    if not problems:
        print(f"{args.config}: OK")
        return 0
    print(f"{args.config}: {len(problems)} problem(s)", file=sys.stderr)
    for path, msg in problems:
        print(f"  - {path}: {msg}" if path else f"  - {msg}", file=sys.stderr)
    return 2


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
    p.set_defaults(func=_train)

    p = sub.add_parser("validate", help="check a run config and list every problem (exit code 2 if any)")
    p.add_argument("config", help="run config (YAML)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, checked too")
    p.set_defaults(func=_validate)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of the ``peftkit`` console script."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
