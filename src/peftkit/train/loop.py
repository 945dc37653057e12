"""The one training loop, on ``accelerate``: every task and every method goes through ``train``.

It runs the same on one CPU, one GPU, or several processes (``accelerate launch``): batches are
sharded by accelerate, only the main process writes files. Data order is a seeded permutation per
epoch and every checkpoint holds the RNG states and data position, so a resumed run continues
exactly where the interrupted one was (bit-identical adapters on CPU).
"""

from __future__ import annotations

import math
import os
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import torch
from torch.utils.data import DataLoader, Sampler

from ..errors import ConfigError, PeftkitError
from ..progress import bar, bar_disabled, phase
from ..registry import method_for_config
from ..tracking.lineage import load_initial_weights
from ..tracking.trackers import log_metrics
from . import runs, state
from .optimizers import build_optimizer
from .prepare import Prepared, PreparedData, prepare
from .prompting import write_style
from .tasks import TASKS, ModelTask, classification_scores, exact_match, generate_answers, mean_loss


class TrainingError(PeftkitError, RuntimeError):
    """Training stopped: a NaN/inf loss, or an interrupted run that could not be saved."""


class EpochPermutation(Sampler[int]):
    """A fresh seeded permutation per epoch: the same on every run and on resume."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    # Not named set_epoch on purpose: accelerate calls set_epoch with its own per-loader
    # counter, which restarts at 0 for the loader that skips batches on resume.
    def use_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


@dataclass
class LoopState:
    """What the loop tracks between steps (and what a checkpoint saves)."""

    progress: state.Progress = field(default_factory=state.Progress)
    tokens_since_log: int = 0
    started: float = field(default_factory=time.time)
    last_log: float = field(default_factory=time.time)
    losses: list = field(default_factory=list)  # this optimizer step's micro-batch losses
    last_eval: Optional[tuple[int, dict]] = None  # (step, metrics) of the latest evaluation


@contextmanager
def _interrupt_flag() -> Iterator[dict]:
    """Ctrl-C sets a flag instead of killing the step in the middle; the loop then saves and exits."""
    flag = {"stop": False}
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):  # noqa: ARG001
        if flag["stop"]:  # a second Ctrl-C really stops
            signal.signal(signal.SIGINT, previous)
            raise KeyboardInterrupt
        flag["stop"] = True

    try:
        signal.signal(signal.SIGINT, handler)
    except ValueError:  # not in the main thread: no handler, plain KeyboardInterrupt
        pass
    try:
        yield flag
    finally:
        try:
            signal.signal(signal.SIGINT, previous)
        except ValueError:
            pass


def _total_steps(cfg: Any, batches_per_epoch: int) -> int:
    if cfg.train.max_steps:
        return cfg.train.max_steps
    return cfg.train.epochs * max(1, math.ceil(batches_per_epoch / cfg.train.grad_accum))


def _fill_derived_settings(cfg: Any, peft_model: Any, total: int) -> None:
    """Give the adapter the settings it derives from the run's step count (AdaLoRA's total_step,
    when the adapter section leaves it out). The model was built with train.max_steps, or a
    stand-in for runs counted in epochs; only now, with the data loader sharded, is the count known.
    The saved adapter configs carry the value; the run's config and hash keep what the user wrote."""
    live = peft_model.peft_config["default"]
    try:
        for key, value in cfg.derived_settings(total).items():
            if getattr(live, key) != value:
                setattr(live, key, value)  # validated: a value that does not fit raises and changes nothing
    except ConfigError as e:
        raise ConfigError(f"The adapter does not fit the run's {total} optimizer steps:",
                          [(f"adapter.{path}", message) for path, message in e.problems]) from None


def evaluate(prep: Prepared, model: Any, cfg: Any, accelerator: Any, what: str = "evaluation") -> dict[str, float]:
    """Every metric in ``eval.metrics`` on the evaluation split (empty dict if there is none), with
    a progress bar per pass named after ``what`` (on a terminal of the main process only)."""
    if not prep.eval_examples:
        return {}
    model.eval()
    batches = [
        {k: v.to(accelerator.device) for k, v in b.items()}
        for b in DataLoader(prep.eval_examples, batch_size=cfg.train.batch_size, collate_fn=prep.collate, generator=torch.Generator())
    ]
    results: dict[str, float] = {}
    task = TASKS[cfg.train.task]
    main = accelerator.is_main_process
    if "loss" in cfg.eval.metrics:
        results["eval_loss"] = mean_loss(model, bar(batches, f"{what}: loss", enabled=main), task.loss, cfg.train.dpo_beta)
    if isinstance(task, ModelTask):  # the task scores itself
        results.update({f"eval_{k}": v for k, v in task.scores(model, prep, cfg, batches).items()})
    elif {"accuracy", "f1"} & set(cfg.eval.metrics):
        scores = classification_scores(model, bar(batches, f"{what}: classify", enabled=main), len(prep.label_names))
        results.update({f"eval_{k}": v for k, v in scores.items() if k in cfg.eval.metrics})
    elif "exact_match" in cfg.eval.metrics and prep.eval_prompts:
        prep.predictions = generate_answers(model, prep.tokenizer, prep.eval_prompts, cfg.eval.max_new_tokens,
                                            progress=f"{what}: generate" if main else None)
        results["eval_exact_match"] = exact_match(prep.predictions, prep.eval_references)
    model.train()
    return results


def train(cfg: Any, run_dir: str, resume_from: Optional[str] = None, accelerator: Any = None,
          prepared_data: Optional[PreparedData] = None) -> dict[str, Any]:
    """Run ``cfg`` into ``run_dir`` (resuming from a checkpoint folder if given; with the data
    from :func:`~peftkit.train.prepare.prepare_data` if already made); returns the final metrics.
    Raises :class:`TrainingError` on a NaN/inf loss (the last good checkpoint stays)."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    accelerator = accelerator or Accelerator(
        gradient_accumulation_steps=cfg.train.grad_accum, mixed_precision=cfg.train.mixed_precision
    )
    set_seed(cfg.train.seed)
    prep = prepare(cfg, main_process=accelerator.is_main_process, prepared_data=prepared_data)
    model = prep.model
    if cfg.adapter.get("from") and not resume_from:  # lineage: start from another run's adapter
        load_initial_weights(model, cfg.adapter["from"])
    spec = method_for_config(model.peft_config["default"])
    sampler = EpochPermutation(len(prep.train_examples), cfg.train.seed)
    # the loader's own generator: creating an iterator must not draw from the global RNG, whose
    # state a checkpoint restores (dropout masks after a resume depend on it)
    loader = DataLoader(prep.train_examples, batch_size=cfg.train.batch_size, sampler=sampler, collate_fn=prep.collate,
                        generator=torch.Generator())
    raw_optimizer = build_optimizer(model, cfg)
    model, optimizer, loader = accelerator.prepare(model, raw_optimizer, loader)
    # Steps count optimizer updates on this process's shard of the data (len(loader) after
    # prepare). The scheduler is not given to accelerate, which would step it once per process
    # per update (its schedule then ends half-way with two processes); the loop steps it itself.
    total = _total_steps(cfg, len(loader))
    _fill_derived_settings(cfg, accelerator.unwrap_model(model), total)
    from transformers import get_scheduler

    scheduler = get_scheduler(cfg.train.scheduler, raw_optimizer, num_warmup_steps=cfg.train.warmup_steps,
                              num_training_steps=total)
    loop = LoopState()
    if resume_from:
        loop.progress, _ = state.load_checkpoint(resume_from, accelerator.unwrap_model(model), optimizer, scheduler)
    if cfg.eval.at_start and loop.progress.step == 0 and prep.eval_examples:
        with phase("scoring the base model (eval.at_start)", enabled=accelerator.is_main_process):
            record = {"step": 0, **evaluate(prep, model, cfg, accelerator, "base model")}  # adapters start as identity
        if accelerator.is_main_process:
            log_metrics(accelerator, run_dir, record)
    loop.last_log = time.time()  # tokens/s counts training time only, not the base model's scoring
    model.train()
    with _interrupt_flag() as interrupt:
        final = _run_epochs(cfg, run_dir, prep, model, optimizer, scheduler, loader, sampler, accelerator, spec, loop, total, interrupt)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        accelerator.unwrap_model(model).save_pretrained(os.path.join(run_dir, "adapter"))
        if prep.predictions:
            rows = [{"prompt": p, "prediction": a, "reference": r}
                    for p, a, r in zip(prep.eval_prompts, prep.predictions, prep.eval_references)]
            runs.write_json_atomic(os.path.join(run_dir, "eval_predictions.json"), rows)
        if prep.eval_examples:  # what shares (exact match 0.95) are counted in: 19/20
            runs.update_run_json(run_dir, eval_size=len(prep.eval_prompts) if prep.predictions else len(prep.eval_examples))
        if prep.prompt_style and cfg.train.task != "classification":  # generate/chat prompt as training did
            write_style(os.path.join(run_dir, "adapter"), prep.prompt_style)
        if prep.label_names:  # a classifier's label names travel with its adapter
            runs.write_json_atomic(os.path.join(run_dir, "adapter", "labels.json"), prep.label_names)
    return final


def _run_epochs(cfg, run_dir, prep, model, optimizer, scheduler, loader, sampler, accelerator, spec, loop, total, interrupt):
    from tqdm.auto import tqdm

    task = TASKS[cfg.train.task]
    main = accelerator.is_main_process
    steps = tqdm(total=total, initial=loop.progress.step, disable=bar_disabled(main), desc="train", dynamic_ncols=True)
    p = loop.progress
    first_step = p.step
    while p.step < total:
        sampler.use_epoch(p.epoch)
        batches = accelerator.skip_first_batches(loader, p.batch_in_epoch) if p.batch_in_epoch else loader
        for batch in batches:
            with accelerator.accumulate(model):
                loss, tokens = task.loss(model, batch, cfg.train.dpo_beta)
                if spec.extra_loss is not None:
                    loss = loss + spec.extra_loss(accelerator.unwrap_model(model))
                value, tokens, stop, bad = _agree(accelerator, loss, tokens, interrupt["stop"])
                if bad:
                    _fail(run_dir, main, f"loss is {bad} at step {p.step + 1}; training stopped, the last good "
                                         f"checkpoint is kept")
                accelerator.backward(loss)
                _fault_injection(p.step + 1)
                if accelerator.sync_gradients and cfg.train.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm)
                optimizer.step()
                if accelerator.sync_gradients and not accelerator.optimizer_step_was_skipped:
                    scheduler.step()  # once per update (an fp16 overflow skips the update)
                if accelerator.sync_gradients and spec.on_step_end is not None:
                    # before zero_grad: AdaLoRA's rank allocation reads this update's gradients
                    spec.on_step_end(accelerator.unwrap_model(model), p.step + 1, total)
                optimizer.zero_grad()
            p.batch_in_epoch += 1
            loop.tokens_since_log += tokens
            loop.losses.append(value)
            if not accelerator.sync_gradients:
                continue
            p.step += 1
            _after_step(cfg, run_dir, prep, model, optimizer, scheduler, accelerator, loop, steps)
            if stop:  # Ctrl-C: every process stops after the same step, with a checkpoint of it
                if p.step % cfg.train.save_steps:  # (unless _after_step just wrote one)
                    _save(run_dir, model, optimizer, scheduler, accelerator, p)
                raise KeyboardInterrupt
            if p.step >= total:
                break
        else:
            p.epoch, p.batch_in_epoch = p.epoch + 1, 0
    steps.close()
    return _measure_last_step(cfg, run_dir, prep, model, optimizer, scheduler, accelerator, loop, trained=p.step > first_step)


def _measure_last_step(cfg, run_dir, prep, model, optimizer, scheduler, accelerator, loop, trained: bool) -> dict:
    """Every run ends measured, whatever ``eval_steps`` and ``save_steps`` are: the last step is
    evaluated (logged like any evaluation, so plots, ``runs list`` and ``compare`` show it) and
    checkpointed. A resumed run that had nothing left to train is scored but logs and saves nothing
    new (its record already ends at that step)."""
    p = loop.progress
    if loop.last_eval and loop.last_eval[0] == p.step:  # the last step was just evaluated
        return loop.last_eval[1]
    with phase(f"final evaluation at step {p.step}", enabled=accelerator.is_main_process):
        metrics = evaluate(prep, model, cfg, accelerator, "final evaluation")
    if trained and metrics and accelerator.is_main_process:
        log_metrics(accelerator, run_dir, {"step": p.step, "epoch": p.epoch, **metrics})
    if trained and p.step % cfg.train.save_steps:
        _save(run_dir, model, optimizer, scheduler, accelerator, p)
    return metrics


def _agree(accelerator, loss: torch.Tensor, tokens: int, stop: bool) -> tuple[float, int, bool, Optional[str]]:
    """This micro-batch as all processes see it: ``(mean loss, tokens, stop, bad loss or None)``.

    With several processes one all-reduce makes them agree, so that a NaN on one of them, or a
    Ctrl-C that reached one of them first, stops all of them at the same step; otherwise the
    others would wait forever in the next collective. ``bad`` names the loss value that is not
    finite."""
    value = float(loss.detach())
    if accelerator.num_processes == 1:
        return value, tokens, stop, None if math.isfinite(value) else str(value)
    finite = math.isfinite(value)
    sums = accelerator.reduce(torch.tensor([value if finite else 0.0, float(not finite), float(tokens), float(stop)],
                                           dtype=torch.float64, device=accelerator.device), "sum").tolist()
    bad = None if sums[1] == 0 else str(value) if not finite else "not finite on another process"
    return sums[0] / accelerator.num_processes, int(sums[2]), sums[3] > 0, bad


def _after_step(cfg, run_dir, prep, model, optimizer, scheduler, accelerator, loop, steps) -> None:
    p, main = loop.progress, accelerator.is_main_process
    now = time.time()
    record: dict[str, Any] = {}
    loss, loop.losses = sum(loop.losses) / len(loop.losses), []  # the mean over accumulated micro-batches
    if p.step % cfg.train.logging_steps == 0:
        rate = loop.tokens_since_log / max(now - loop.last_log, 1e-9)
        record = {"step": p.step, "epoch": p.epoch, "loss": round(loss, 6), "lr": scheduler.get_last_lr()[0], "tokens_per_s": round(rate, 1)}
        loop.tokens_since_log, loop.last_log = 0, now
        steps.set_postfix(loss=f"{loss:.4f}", lr=f"{record['lr']:.2e}", tok_s=f"{rate:.0f}")
    paused_at = time.time()  # evaluation and checkpoints below are not training time
    if p.step % cfg.train.eval_steps == 0:
        loop.last_eval = (p.step, evaluate(prep, model, cfg, accelerator, f"evaluation at step {p.step}"))
        record = {"step": p.step, **record, **loop.last_eval[1]}
    if record and main:
        log_metrics(accelerator, run_dir, record)
    steps.update(1)
    if p.step % cfg.train.save_steps == 0:
        _save(run_dir, model, optimizer, scheduler, accelerator, p)
    loop.last_log += time.time() - paused_at  # so the next tokens/s leaves them out


def _save(run_dir, model, optimizer, scheduler, accelerator, progress) -> None:
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        folder = os.path.join(run_dir, "checkpoints", f"step-{progress.step:05d}")
        state.save_checkpoint(folder, accelerator.unwrap_model(model), optimizer, scheduler, progress)


def _fault_injection(step: int) -> None:
    """Tests of crash recovery set PEFTKIT_FAULT_KILL_AT_STEP=N: the process SIGKILLs itself in
    the middle of step N (after backward, before the optimizer), as a crash would."""
    if os.environ.get("PEFTKIT_FAULT_KILL_AT_STEP") == str(step):
        os.kill(os.getpid(), signal.SIGKILL)


def _fail(run_dir: str, main: bool, message: str) -> None:
    if main:
        runs.update_run_json(run_dir, status="failed", error=message, ended=runs.now())
    raise TrainingError(message)
