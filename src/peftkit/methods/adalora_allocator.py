"""AdaLoRA's rank allocator (Zhang et al., 2023): which singular values each layer keeps.

After every optimizer step (with that step's gradients still in place) each AdaLoRA tensor gets an
importance ``|p * grad|``, smoothed by an exponential moving average (``beta1``, the
*sensitivity*) and paired with the EMA of its deviation from that average (``beta2``, the
*uncertainty*); an entry scores ``sensitivity * uncertainty``. A triplet ``(A row i, E_i, B column
i)`` scores ``score(E_i) + mean score of A row i + mean score of B column i``.

The budget (triplets kept across all layers) follows ``peft``'s schedule: ``init_r`` per layer for
the first ``tinit`` steps, then a cubic decrease to ``target_r`` per layer at ``total_step -
tfinal``, re-allocated every ``deltaT`` steps, then fixed. Allocating zeroes the ``E`` entries of
the lowest-scoring triplets everywhere; the final mask is what ``rank_pattern`` records.
The numbers match ``peft``'s ``RankAllocator`` for the same gradients (tested side by side).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch
import torch.nn as nn

from ..errors import AdapterError
from ..targets import iter_adapter_modules
from .adalora_layers import AdaLoraLinear

if TYPE_CHECKING:
    from .adalora import AdaLoraConfig

TENSORS = ("lora_A", "lora_B", "lora_E")


class RankAllocator:
    """Importance scores and masks for one adapter of a model.

    ``model`` is the user's model holding the AdaLoRA layers; ``config`` the adapter's live config
    (read at every step, so a changed ``total_step`` takes effect).

    Example:
        >>> allocator = RankAllocator(peft_model.get_base_model(), "default", peft_model.peft_config["default"])  # doctest: +SKIP
        >>> allocator.update_and_allocate(step)  # after optimizer.step(), before zero_grad()  # doctest: +SKIP
    """

    def __init__(self, model: nn.Module, adapter_name: str, config: "AdaLoraConfig"):
        self.model = model
        self.adapter_name = adapter_name
        self.config = config
        # the latest mask, as "<module key>.lora_E" -> kept flags (peft's saved rank_pattern form)
        self.rank_pattern: Optional[dict[str, list[bool]]] = None
        self.reset_ipt()
        self.init_bgt = sum(layer.r[adapter_name] for _, layer in self.layers())

    def layers(self) -> list[tuple[str, AdaLoraLinear]]:
        """``(module key, layer)`` of every layer holding this adapter, in model order."""
        return [(key, m) for key, m in iter_adapter_modules(self.model)
                if isinstance(m, AdaLoraLinear) and self.adapter_name in m.adapter_names]

    @property
    def target_bgt(self) -> int:
        return self.config.target_r * len(self.layers())

    def reset_ipt(self) -> None:
        """Forget the importance statistics (done once the final ranks are chosen)."""
        self.ipt: dict[tuple[str, str], torch.Tensor] = {}
        self.exp_avg_ipt: dict[tuple[str, str], torch.Tensor] = {}
        self.exp_avg_unc: dict[tuple[str, str], torch.Tensor] = {}

    def budget_schedule(self, step: int) -> tuple[int, bool]:
        """``(triplets to keep, whether to re-allocate at this step)``."""
        cfg = self.config
        if step <= cfg.tinit:
            return self.init_bgt, False
        if step > cfg.total_step - cfg.tfinal:
            return self.target_bgt, True
        left = 1 - (step - cfg.tinit) / (cfg.total_step - cfg.tfinal - cfg.tinit)
        budget = int((self.init_bgt - self.target_bgt) * (left**3) + self.target_bgt)
        return budget, step % cfg.deltaT == 0

    @torch.no_grad()
    def update_ipt(self) -> None:
        """Fold this step's ``|p * grad|`` into the sensitivity and uncertainty averages."""
        beta1, beta2 = self.config.beta1, self.config.beta2
        for key, layer in self.layers():
            for attr in TENSORS:
                p = getattr(layer, attr)[self.adapter_name]
                if p.grad is None:
                    raise AdapterError(
                        f"AdaLoRA rank allocation needs this step's gradients, but {key}.{attr} has none: call "
                        "update_and_allocate after loss.backward() and optimizer.step(), before optimizer.zero_grad()"
                    )
                name = (key, attr)
                if name not in self.ipt:
                    self.exp_avg_ipt[name] = torch.zeros_like(p)
                    self.exp_avg_unc[name] = torch.zeros_like(p)
                ipt = self.ipt[name] = (p * p.grad).abs().detach()
                self.exp_avg_ipt[name] = beta1 * self.exp_avg_ipt[name] + (1 - beta1) * ipt
                self.exp_avg_unc[name] = beta2 * self.exp_avg_unc[name] + (1 - beta2) * (ipt - self.exp_avg_ipt[name]).abs()

    def triplet_scores(self) -> dict[str, torch.Tensor]:
        """Per layer key, the score of each of its triplets (a vector of length r)."""
        scores = {}
        for key, _ in self.layers():
            score = {attr: self.exp_avg_ipt[(key, attr)] * self.exp_avg_unc[(key, attr)] for attr in TENSORS}
            a_and_b = score["lora_A"].mean(dim=1) + score["lora_B"].mean(dim=0)
            scores[key] = score["lora_E"].view(-1) + a_and_b
        return scores

    @torch.no_grad()
    def mask_to_budget(self, budget: int) -> dict[str, list[bool]]:
        """Zero ``E`` of every triplet scoring at or below the ``(init_bgt - budget)``-th lowest score."""
        scores = self.triplet_scores()
        to_drop = self.init_bgt - budget
        threshold = (torch.kthvalue(torch.cat(list(scores.values())), k=to_drop)[0].item()
                     if to_drop > 0 else float("-inf"))
        pattern = {}
        for key, layer in self.layers():
            dropped = scores[key] <= threshold
            layer.lora_E[self.adapter_name].masked_fill_(dropped.view(-1, 1), 0.0)
            pattern[f"{key}.lora_E"] = (~dropped).tolist()
        return pattern

    @torch.no_grad()
    def mask_using_rank_pattern(self) -> None:
        """Zero again the ``E`` entries the final mask dropped (training keeps moving them)."""
        for key, layer in self.layers():
            kept = self.rank_pattern.get(f"{key}.lora_E")
            e = layer.lora_E[self.adapter_name]
            if kept is not None and len(kept) == e.shape[0]:
                e.masked_fill_(~torch.tensor(kept, device=e.device).view(-1, 1), 0.0)

    # ------------------------------------------------------------------ resuming a training run
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Everything the schedule carries from one step to the next, as named tensors (a training
        checkpoint stores them with safetensors): ``ipt`` / ``exp_avg_ipt`` / ``exp_avg_unc``
        ``.<module key>.<tensor>`` and the latest mask as ``rank_pattern.<module key>.lora_E``
        (bools). The budget and schedule follow from the config and the layers.

        Example:
            >>> restored = RankAllocator(model, "default", config)  # doctest: +SKIP
            >>> restored.load_state_tensors(allocator.state_tensors())  # doctest: +SKIP
        """
        found = {f"{kind}.{key}.{attr}": t.detach().clone()
                 for kind, table in self._tables().items() for (key, attr), t in table.items()}
        for key, kept in (self.rank_pattern or {}).items():
            found[f"rank_pattern.{key}"] = torch.tensor(kept, dtype=torch.bool)
        return found

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_tensors` returned; every tensor must name a layer of this
        adapter with the shape it has now, else :class:`AdapterError` and nothing changes."""
        shapes = {(key, attr): getattr(layer, attr)[self.adapter_name] for key, layer in self.layers() for attr in TENSORS}
        tables: dict[str, dict] = {kind: {} for kind in self._tables()}
        pattern: dict[str, list[bool]] = {}
        for name, tensor in tensors.items():
            kind, _, rest = name.partition(".")
            key, _, attr = rest.rpartition(".")
            live = shapes.get((key, attr))
            if kind == "rank_pattern" and live is not None and attr == "lora_E" and tensor.numel() == live.shape[0]:
                pattern[rest] = tensor.bool().tolist()
            elif kind in tables and live is not None and tensor.shape == live.shape:
                tables[kind][(key, attr)] = tensor.to(device=live.device, dtype=live.dtype)
            else:
                raise AdapterError(
                    f"AdaLoRA state {name!r} (shape {tuple(tensor.shape)}) does not fit adapter {self.adapter_name!r} "
                    "of this model; was the checkpoint written with another adapter config?")
        self.ipt, self.exp_avg_ipt, self.exp_avg_unc = tables["ipt"], tables["exp_avg_ipt"], tables["exp_avg_unc"]
        self.rank_pattern = pattern or None

    def _tables(self) -> dict[str, dict[tuple[str, str], torch.Tensor]]:
        return {"ipt": self.ipt, "exp_avg_ipt": self.exp_avg_ipt, "exp_avg_unc": self.exp_avg_unc}

    def update_and_allocate(self, global_step: int) -> Optional[dict[str, list[bool]]]:
        """One step of the schedule (``peft``'s ``update_and_allocate``): update the scores and
        re-mask while the budget shrinks; choose the final mask at ``total_step - tfinal``; keep
        applying it afterwards. Returns the current mask (None before the first allocation)."""
        end = self.config.total_step - self.config.tfinal
        if global_step < end:
            self.update_ipt()
            budget, allocate = self.budget_schedule(global_step)
            if allocate:
                self.rank_pattern = self.mask_to_budget(budget)
        elif global_step == end:
            if self.exp_avg_ipt:  # no scores yet (called for the first time at the end): nothing to rank
                self.rank_pattern = self.mask_to_budget(self.budget_schedule(global_step)[0])
            self.reset_ipt()
        elif self.rank_pattern is not None:
            self.mask_using_rank_pattern()
        return self.rank_pattern
