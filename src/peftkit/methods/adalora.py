"""AdaLoRA (Zhang et al., 2023): LoRA in SVD form whose rank budget moves, during training, to
the layers that need it. The config mirrors ``peft.AdaLoraConfig``; the layers live in
:mod:`peftkit.methods.adalora_layers`, the rank schedule in :mod:`peftkit.methods.adalora_allocator`.

Training needs two things beyond the task loss, and ``peftkit train`` does both through the
registry: the orthogonal regulariser is added to the loss (:func:`orthogonal_regularization`;
``peft`` adds it inside ``forward``), and after each optimizer step :func:`update_and_allocate`
updates the importance scores and masks. When training ends, :func:`apply_rank_pattern` drops the
masked triplets and records ``rank_pattern`` in the config, so the saved adapter holds the pruned
ranks and reloads with them, in peftkit and in ``peft``. Checkpoints saved before that hold the
full ``init_r`` tensors with the dropped singular values at zero (the same outputs), and the
allocator's state (importance averages, latest mask), so a resumed run allocates as an unbroken
one. A run fills ``total_step`` from its own step count when the adapter section leaves it out.
"""

from __future__ import annotations

import functools
import warnings
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Optional

import torch
import torch.nn as nn
from pydantic import field_validator

from ..config import PeftType
from ..quantized.layers import quantized_factories
from ..registry import LayerFactory, MethodSpec, register_method
from .adalora_allocator import RankAllocator
from .adalora_conv import AdaLoraConv2d
from .adalora_layers import AdaLoraLinear
from .lora import LoraConfig
from .lora_layers import is_conv1d

if TYPE_CHECKING:
    from ..model import PeftModel

ALLOCATORS = "rank_allocators"  # attribute of PeftModel.base_model: adapter name -> RankAllocator


class AdaLoraConfig(LoraConfig):
    """Configuration of an AdaLoRA adapter; fields and defaults as in ``peft.AdaLoraConfig``
    (which extends ``LoraConfig``; ``r``, ``use_rslora`` and ``alpha_pattern`` have no effect).

    Example:
        >>> from peftkit import AdaLoraConfig
        >>> cfg = AdaLoraConfig(init_r=12, target_r=4, total_step=1000, tinit=100, tfinal=200,
        ...                     target_modules=["q_proj", "v_proj"])
        >>> cfg.init_r, cfg.target_r, cfg.rank_pattern
        (12, 4, None)
    """

    peft_type: ClassVar[str] = PeftType.ADALORA

    target_r: int = 8
    init_r: int = 12
    tinit: int = 0
    tfinal: int = 0
    deltaT: int = 1
    beta1: float = 0.85
    beta2: float = 0.85
    orth_reg_weight: float = 0.5
    total_step: Optional[int] = None
    # "<module key>.lora_E" -> which of the init_r singular values the module kept (written when
    # the ranks are final; a saved adapter is built with these ranks)
    rank_pattern: Optional[dict[str, list[bool]]] = None  # type: ignore[assignment]
    init_lora_weights: bool = True  # type: ignore[assignment]
    # peft treats any "<method>_only" as "the biases of the adapted layers"; AdaLoRA's own spelling
    # is accepted beside LoRA's
    bias: Literal["none", "all", "lora_only", "adalora_only"] = "none"  # type: ignore[assignment]

    @field_validator("rank_pattern", mode="before")
    @classmethod
    def _ranks(cls, value: Any) -> Any:  # replaces LoraConfig's check of integer ranks
        flags = lambda v: isinstance(v, list) and all(isinstance(k, bool) for k in v)  # noqa: E731
        if value is not None and not (isinstance(value, dict) and all(flags(v) for v in value.values())):
            raise ValueError("must map '<module>.lora_E' to a list of true/false flags, one per initial rank")
        return value

    @field_validator("init_lora_weights", mode="before")
    @classmethod
    def _init(cls, value: Any) -> Any:  # replaces LoraConfig's: PiSSA/OLoRA/Gaussian do not apply
        if not isinstance(value, bool):
            raise ValueError("must be true (A, B ~ N(0, 0.02), E = 0) or false (all random); AdaLoRA has no other init")
        return value

    @field_validator("init_r", "target_r", "deltaT", mode="before")
    @classmethod
    def _positive(cls, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError("must be a positive integer")
        return value

    @field_validator("tinit", "tfinal")
    @classmethod
    def _steps(cls, value: int) -> int:
        if value < 0:
            raise ValueError("must be a number of steps >= 0")
        return value

    @field_validator("beta1", "beta2")
    @classmethod
    def _beta(cls, value: float) -> float:
        if not 0.0 < value < 1.0:
            raise ValueError("must be in (0, 1) (an EMA coefficient, e.g. 0.85)")
        return value

    @field_validator("r", "use_rslora", "alpha_pattern")
    @classmethod
    def _unused(cls, value: Any, info: Any) -> Any:
        if value != LoraConfig.model_fields[info.field_name].default:
            hint = " Set init_r for the starting rank." if info.field_name == "r" else ""
            # peft's sentence first (code may match it), then the fix
            warnings.warn(f"Note that `{info.field_name}` is not used in AdaLora and will be ignored.{hint}", stacklevel=2)
        return value

    def check(self) -> list[tuple[str, str]]:
        problems = super().check()
        if self.total_step is None or self.total_step <= 0:
            problems.append(("total_step", "AdaLoRA does not work when `total_step` is None, supply a value > 0. "
                                           "It is the number of training steps of the rank schedule (peftkit train "
                                           "fills it from the run's steps when unset)"))
        elif self.tinit >= self.total_step - self.tfinal:
            problems.append(("tinit", "The supplied schedule values don't allow for a budgeting phase. Decrease "
                                      f"`tfinal`/`tinit` or increase `total_step`: need tinit ({self.tinit}) < "
                                      f"total_step - tfinal ({self.total_step} - {self.tfinal}) (in peftkit train: "
                                      "total_step is the run's steps, unless set)"))
        if self.target_r > self.init_r:
            problems.append(("target_r", f"is larger than init_r ({self.target_r} > {self.init_r}); AdaLoRA only "
                                         "removes ranks, so set target_r <= init_r"))
        if self.target_parameters:
            problems.append(("target_parameters", "AdaLoRA adapts modules only (LoRA takes parameters); remove it"))
        if self.lora_bias:
            problems.append(("lora_bias", "AdaLoRA layers have no bias on lora_B (peft ignores the flag); set lora_bias=False"))
        if getattr(self, "use_dora", False):
            problems.append(("use_dora", "ADALORA does not support DoRA (its SVD layers have no magnitude vector); "
                                         "remove use_dora"))
        if self.orth_reg_weight < 0:  # peft's sentence (its tests match it)
            problems.append(("orth_reg_weight", "`orth_reg_weight` should be greater than or equal to 0, but the value "
                                                f"passed is {self.orth_reg_weight}"))
        return problems


# ---------------------------------------------------------------------------------- training hooks
def _allocators(peft_model: "PeftModel") -> dict[str, RankAllocator]:
    return peft_model.base_model.__dict__.setdefault(ALLOCATORS, {})


def _trains(peft_model: "PeftModel", adapter_name: str) -> bool:
    layer = next((m for m in peft_model._adapter_layers() if adapter_name in getattr(m, "lora_E", {})), None)
    return layer is not None and layer.lora_E[adapter_name].requires_grad


def update_and_allocate(peft_model: "PeftModel", global_step: int) -> None:
    """Update the importance scores and rank masks of every adapter being trained; call it after
    ``optimizer.step()`` and before ``optimizer.zero_grad()``. Also reachable under ``peft``'s
    name: ``model.base_model.update_and_allocate(global_step)``.

    Example:
        >>> loss.backward(); optimizer.step()  # doctest: +SKIP
        >>> update_and_allocate(model, step)  # doctest: +SKIP
        >>> optimizer.zero_grad()  # doctest: +SKIP
    """
    for name, allocator in _allocators(peft_model).items():
        if _trains(peft_model, name):
            allocator.update_and_allocate(global_step)


def apply_rank_pattern(peft_model: "PeftModel", adapter_name: Optional[str] = None) -> Optional[dict[str, list[bool]]]:
    """Make the allocator's latest mask final: drop the masked triplets from the layers and record
    ``rank_pattern`` in the adapter's config, so that ``save_pretrained`` writes the pruned ranks.
    The layers get new parameters, so do this after training (``peftkit train`` does it after the
    last step). Returns the pattern, or None if no allocation has happened yet.

    Example:
        >>> apply_rank_pattern(model)  # doctest: +SKIP
        >>> model.save_pretrained("out/adalora")  # doctest: +SKIP
    """
    names = [adapter_name] if adapter_name else list(_allocators(peft_model))
    pattern = None
    for name in names:
        allocator = _allocators(peft_model).get(name)
        pattern = allocator.rank_pattern if allocator else None
        if pattern is not None:
            _keep_ranks(peft_model, name, pattern)
    return pattern


def _keep_ranks(peft_model: "PeftModel", name: str, pattern: dict[str, list[bool]]) -> None:
    allocator = _allocators(peft_model)[name]
    for key, layer in allocator.layers():
        kept = pattern.get(f"{key}.lora_E")
        if kept is not None and len(kept) == layer.r[name]:
            layer.keep_ranks(name, kept)
    peft_model.peft_config[name].rank_pattern = {k: list(v) for k, v in pattern.items()}
    # the allocator goes on from the pruned layers (e.g. if training continues)
    _allocators(peft_model)[name] = RankAllocator(allocator.model, name, peft_model.peft_config[name])


def orthogonal_regularization(peft_model: "PeftModel") -> torch.Tensor:
    """``orth_reg_weight * mean ||P P^T - I||_F`` over the ``lora_A`` (``P = A``) and ``lora_B``
    (``P = B^T``) of each adapter being trained, as ``peft`` adds to the loss; 0 if none trains.

    Example:
        >>> loss = model(**batch).loss + orthogonal_regularization(model)  # doctest: +SKIP
    """
    total: torch.Tensor = torch.zeros(())
    for name, config in peft_model.peft_config.items():
        if not isinstance(config, AdaLoraConfig) or not _trains(peft_model, name):
            continue
        norms = []
        for layer in peft_model._adapter_layers():
            if isinstance(layer, AdaLoraLinear) and name in layer.adapter_names:
                for p in (layer.lora_A[name], layer.lora_B[name].T):
                    gram = p @ p.T
                    norms.append(torch.linalg.matrix_norm(gram - torch.eye(*gram.shape, dtype=gram.dtype, device=gram.device)))
        if norms:  # summed one by one in peft's order, so the loss matches peft's bit for bit
            total = total + config.orth_reg_weight * (sum(norms) / len(norms))
    return total


def _on_add(peft_model: "PeftModel", adapter_name: str, config: AdaLoraConfig) -> None:
    holder = peft_model.base_model
    allocators = _allocators(peft_model)  # adapters loaded for inference get none
    if not config.inference_mode:
        allocators[adapter_name] = RankAllocator(
            holder.model, adapter_name, peft_model.peft_config[adapter_name])
    # peft's spelling: model.base_model.update_and_allocate(global_step)
    holder.__dict__["update_and_allocate"] = functools.partial(update_and_allocate, peft_model)


def _on_delete(peft_model: "PeftModel", adapter_name: str) -> None:
    _allocators(peft_model).pop(adapter_name, None)


def _on_step_end(peft_model: "PeftModel", step: int, total: int) -> None:
    update_and_allocate(peft_model, step)
    if step == total:
        apply_rank_pattern(peft_model)


def _run_defaults(fields: dict[str, Any], total_steps: Optional[int]) -> dict[str, Any]:
    """``total_step`` from the run when the adapter section leaves it unset; a value the user wrote
    stays (with a warning if it is not the run's step count: the schedule then ends early or late)."""
    written = fields.get("total_step")
    if written is not None:
        if total_steps is not None and written != total_steps:
            warnings.warn(f"adapter.total_step is {written} but the run takes {total_steps} optimizer steps; AdaLoRA's rank "
                          "schedule follows total_step (leave it out to use the run's steps)", stacklevel=2)
        return {}
    if total_steps is None:  # validating before the data is read: the shortest schedule the other fields allow
        steps = [fields.get(k) for k in ("tinit", "tfinal")]
        return {"total_step": sum(s for s in steps if isinstance(s, int) and s > 0) + 1}
    return {"total_step": total_steps}


PRUNED = "pruned."  # run-state keys of the final rank_pattern, once the layers were pruned to it


def _run_state(peft_model: "PeftModel", adapter_name: str) -> dict[str, torch.Tensor]:
    """The allocator's state, and the config's rank_pattern: a checkpoint written after the last
    step holds layers already pruned to it, which a resume must prune alike before loading them."""
    allocator = _allocators(peft_model).get(adapter_name)
    pattern = peft_model.peft_config[adapter_name].rank_pattern or {}
    return {**(allocator.state_tensors() if allocator else {}),
            **{PRUNED + key: torch.tensor(kept, dtype=torch.bool) for key, kept in pattern.items()}}


def _load_run_state(peft_model: "PeftModel", adapter_name: str, tensors: dict[str, torch.Tensor]) -> None:
    if _allocators(peft_model).get(adapter_name) is None:
        return
    pruned = {k.removeprefix(PRUNED): v.tolist() for k, v in tensors.items() if k.startswith(PRUNED)}
    if pruned and pruned != peft_model.peft_config[adapter_name].rank_pattern:  # pruned after the run's config was built
        _keep_ranks(peft_model, adapter_name, pruned)
    allocator_state = {k: v for k, v in tensors.items() if not k.startswith(PRUNED)}
    if allocator_state:
        _allocators(peft_model)[adapter_name].load_state_tensors(allocator_state)


def _linear_factory(module: nn.Module, name: str, config: AdaLoraConfig, key: str,
                    cls: type = AdaLoraLinear) -> AdaLoraLinear:
    fan_in_fan_out = is_conv1d(module)  # as for LoRA: the layer decides, the model's config records it
    if config.fan_in_fan_out != fan_in_fan_out:
        config.fan_in_fan_out = fan_in_fan_out
    return cls(module, name, config, key, fan_in_fan_out=fan_in_fan_out)


ADALORA = register_method(
    MethodSpec(
        peft_type="ADALORA",
        mixable=True,
        config_cls=AdaLoraConfig,
        layer_cls=AdaLoraLinear,
        layer_factories=[
            *quantized_factories(AdaLoraLinear, _linear_factory),
            LayerFactory("nn.Linear", lambda m: isinstance(m, nn.Linear), _linear_factory),
            LayerFactory("transformers Conv1D", is_conv1d, _linear_factory),
            LayerFactory("nn.Conv2d", lambda m: isinstance(m, nn.Conv2d), AdaLoraConv2d),
        ],
        on_step_end=_on_step_end,
        extra_loss=orthogonal_regularization,
        on_add=_on_add,
        max_trainable_adapters=1,
        on_delete=_on_delete,
        run_defaults=_run_defaults,
        run_state=_run_state,
        load_run_state=_load_run_state,
    )
)
