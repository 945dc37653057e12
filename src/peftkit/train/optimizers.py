"""The optimizers ``train.optimizer`` selects, and whether each runs here.

- ``adamw``: ``torch.optim.AdamW`` (two float32 moments per trained value);
- ``adamw_8bit``: bitsandbytes' ``AdamW8bit``, the moments in blockwise 8-bit (a quarter of the
  memory; tensors under 4096 values keep float32 moments, as bitsandbytes decides). Runs on CPU;
- ``paged_adamw`` / ``paged_adamw_8bit``: bitsandbytes' paged variants, whose state lives in unified
  memory that the GPU pages out to CPU RAM under memory pressure. They need a CUDA GPU: on a CPU
  bitsandbytes only falls back to the unpaged optimizer with a warning, so peftkit refuses them there;
- ``adafactor``: transformers' ``Adafactor`` (factored second moments, no first moment) with the
  given learning rate, as transformers' Trainer sets it up (``scale_parameter=False,
  relative_step=False``). torch's own ``Adafactor`` scales each update by the parameter's norm, so a
  zero-initialised LoRA ``B`` barely moves (measured: the tiny test run's loss stays flat).

>>> optimizer_problem("adamw") is None
True
"""

from __future__ import annotations

import importlib.util
from typing import Any, Callable, Optional

import torch

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {}


def _bnb(name: str) -> Callable[..., torch.optim.Optimizer]:
    def build(params: list, lr: float, weight_decay: float) -> torch.optim.Optimizer:
        import bitsandbytes as bnb

        return getattr(bnb.optim, name)(params, lr=lr, weight_decay=weight_decay)

    return build


def _adafactor(params: list, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    from transformers.optimization import Adafactor

    return Adafactor(params, lr=lr, weight_decay=weight_decay, scale_parameter=False, relative_step=False,
                     warmup_init=False)


OPTIMIZERS.update({
    "adamw": lambda params, lr, weight_decay: torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay),
    "adamw_8bit": _bnb("AdamW8bit"),
    "paged_adamw": _bnb("PagedAdamW"),
    "paged_adamw_8bit": _bnb("PagedAdamW8bit"),
    "adafactor": lambda params, lr, weight_decay: _adafactor(params, lr, weight_decay),
})


def optimizer_problem(name: str) -> Optional[str]:
    """Why optimizer ``name`` cannot run on this machine (None when it can). A missing GPU is named
    first: installing bitsandbytes would not make a paged optimizer run.

    Example:
        >>> optimizer_problem("adamw") is None
        True
    """
    if name.startswith("paged_") and not torch.cuda.is_available():
        return (f"{name!r} pages optimizer state between GPU and CPU memory and needs a CUDA GPU, which this machine "
                f"does not have; use {name.removeprefix('paged_')!r} instead")
    if name != "adamw" and name != "adafactor" and importlib.util.find_spec("bitsandbytes") is None:
        return f"{name!r} comes from bitsandbytes, which is not installed; pip install 'peftkit[quantization]'"
    return None


def build_optimizer(model: torch.nn.Module, cfg: Any) -> torch.optim.Optimizer:
    """The optimizer ``cfg.train.optimizer`` names, over the model's trainable parameters.

    Example:
        >>> optimizer = build_optimizer(peft_model, run_config)   # doctest: +SKIP
    """
    problem = optimizer_problem(cfg.train.optimizer)
    if problem:
        from ..errors import ConfigError

        raise ConfigError("Invalid run config:", [("train.optimizer", problem)])
    params = [p for p in model.parameters() if p.requires_grad]
    return OPTIMIZERS[cfg.train.optimizer](params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
