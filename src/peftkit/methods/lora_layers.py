"""LoRA layers for ``nn.Linear`` (and GPT-2's ``Conv1D``), ``nn.Embedding`` and ``nn.ConvNd``.

Tensor names and shapes are ``peft``'s, so checkpoints move both ways:
``lora_A[name]`` maps the input down to rank ``r``, ``lora_B[name]`` maps back up, and the output
gains ``scaling * lora_B(lora_A(dropout(x)))`` with ``scaling = lora_alpha / r`` (or ``/ sqrt(r)``
with rsLoRA). ``lora_B`` starts at zero, so a new adapter leaves the model's outputs unchanged.
Adapters added with ``use_dora=True`` are DoRA adapters (see :mod:`peftkit.methods.dora`).
"""

from __future__ import annotations

import abc
import math
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import AdapterError, TargetError
from ..kernels import multi_lora
from ..kernels.lora_linear import fast_path_applies, lora_linear
from ..kernels.dora import dora_fast_path_applies, dora_linear
from ..layers import AdapterLayer
from ..row_batches import rows_for_batch
from ..targets import pattern_value
from .dora import MAGNITUDE, DoraMixin, dora_delta, init_magnitude, weight_norm
from .lora_bias import check_lora_bias, merged_lora_bias

if TYPE_CHECKING:
    from .lora import LoraConfig


def is_conv1d(module: nn.Module) -> bool:
    """transformers' GPT-2 ``Conv1D`` (a linear layer with a transposed weight), without importing it."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf") and getattr(module, "weight", None) is not None


def adapter_dtype(base: torch.Tensor | torch.dtype) -> torch.dtype:
    """The dtype of adapters on a base weight (or base compute dtype) ``base``: float32 on
    half-precision bases (as ``peft`` does by default: updates are tiny relative to the weights and
    vanish in bf16), and on quantized or integer ones."""
    dtype = base if isinstance(base, torch.dtype) else base.dtype
    if dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return dtype if dtype.is_floating_point else torch.float32


class LoraLayer(DoraMixin, AdapterLayer):
    """Shared LoRA bookkeeping: rank, alpha and scaling per adapter (DoRA from :class:`DoraMixin`)."""

    adapter_param_names = ("lora_A", "lora_B", MAGNITUDE)
    adapter_setting_names = ("r", "lora_alpha", "scaling", "use_rslora", "lora_dropout", "lora_bias")
    # What holds one adapter's tensor: a module (nn.Linear, nn.Conv2d) or a bare nn.Parameter.
    _tensor_holder: type[nn.Module] = nn.ModuleDict
    # Whether this layer type can give lora_B a bias (LoraConfig.lora_bias; peft: not embeddings).
    supports_lora_bias: bool = True

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: "LoraConfig", key: str):
        super().__init__(base_layer, key)
        self._init_dora()
        for attr in self.adapter_param_names:
            if attr != MAGNITUDE:
                setattr(self, attr, self._tensor_holder())
        self.lora_dropout = nn.ModuleDict()
        self.r: dict[str, int] = {}
        self.lora_alpha: dict[str, float] = {}
        self.scaling: dict[str, float] = {}
        self.use_rslora: dict[str, bool] = {}
        self.lora_bias: dict[str, bool] = {}
        self.add_adapter(adapter_name, config, key)

    def add_adapter(self, adapter_name: str, config: "LoraConfig", key: str) -> None:
        self._check_dora(config, key)
        check_lora_bias(self, config, key)
        self.lora_bias[adapter_name] = bool(config.lora_bias)  # create_tensors reads it
        r = pattern_value(config.rank_pattern, key, config.r)
        alpha = pattern_value(config.alpha_pattern, key, config.lora_alpha)
        self.r[adapter_name] = r
        self.lora_alpha[adapter_name] = alpha
        self.use_rslora[adapter_name] = config.use_rslora
        self.scaling[adapter_name] = self.configured_scaling(adapter_name)
        self.lora_dropout[adapter_name] = nn.Dropout(config.lora_dropout) if config.lora_dropout > 0 else nn.Identity()
        _, base_dtype, device = self.base_weight_info()
        dtype = adapter_dtype(base_dtype)
        with torch.no_grad():
            self.create_tensors(adapter_name, r)
            self.init_tensors(adapter_name, config.init_lora_weights)
            for attr in self.adapter_param_names:
                holder = getattr(self, attr)
                if adapter_name not in holder:
                    continue
                entry = holder[adapter_name]
                if isinstance(entry, nn.Parameter):
                    holder[adapter_name] = nn.Parameter(entry.to(device=device, dtype=dtype))
                else:
                    entry.to(device=device, dtype=dtype)
            if config.use_dora:  # the magnitude starts at the adapted weight's norm: outputs unchanged
                init_magnitude(self, adapter_name, dtype)

    def stacking_refusal(self, adapter_name: str) -> str | None:
        if adapter_name not in self.lora_magnitude_vector:
            return None
        return (f"adapter {adapter_name!r} uses DoRA, which normalises the module's weight; over another method's "
                f"adapter at {self.key!r} that weight is not the module's effective one (peft's result then depends on "
                "whether dropout is active). Add the DoRA adapter first, target other modules, or set use_dora=False")

    def configured_scaling(self, adapter_name: str) -> float:
        """``lora_alpha / r`` (rsLoRA: ``/ sqrt(r)``): the scaling the adapter's config gives."""
        r = self.r[adapter_name]
        return self.lora_alpha[adapter_name] / (math.sqrt(r) if self.use_rslora[adapter_name] else r)

    # peft's scale API, which diffusers uses for adapter weights and per-call LoRA scales
    def set_scale(self, adapter: str, scale: float) -> None:
        """Scaling of ``adapter`` := ``scale`` times its configured scaling."""
        if adapter in self.scaling:
            self.scaling[adapter] = scale * self.configured_scaling(adapter)

    def scale_layer(self, scale: float) -> None:
        """Multiply the scaling of every active adapter by ``scale``."""
        for name in self.computing_adapters:
            # a new value, never an in-place product: a tensor scaling (prepare_model_for_compiled_hotswap)
            # is a cache key by identity (DoRA's norms, mixed batches), which an in-place change would fool
            self.scaling[name] = self.scaling[name] * scale

    def unscale_layer(self, scale: float | None = None) -> None:
        """Undo :meth:`scale_layer` (``scale=None``: back to the configured scaling)."""
        for name in self.computing_adapters:
            self.scaling[name] = self.configured_scaling(name) if scale is None else self.scaling[name] / scale

    @abc.abstractmethod
    def create_tensors(self, adapter_name: str, r: int) -> None:
        """Create ``lora_A[adapter_name]`` and ``lora_B[adapter_name]`` for this layer type."""

    def init_tensors(self, adapter_name: str, init: bool | str) -> None:
        """``True``: A like ``nn.Linear`` (Kaiming-uniform), B zero. ``"gaussian"``: A ~ N(0, 1/r).
        ``False``: both random, so the adapter changes outputs from the start (for tests)."""
        if init is False:
            return
        if init is True:
            nn.init.kaiming_uniform_(self.lora_A[adapter_name].weight, a=math.sqrt(5))
        elif init == "gaussian":
            nn.init.normal_(self.lora_A[adapter_name].weight, std=1 / self.r[adapter_name])
        else:
            raise TargetError(
                f"init_lora_weights={init!r} is only available for nn.Linear layers, not {self.key!r} "
                f"({type(self.base_layer).__name__}); exclude it or use True / 'gaussian'"
            )
        nn.init.zeros_(self.lora_B[adapter_name].weight)
        if self.lora_bias.get(adapter_name):
            nn.init.zeros_(self.lora_B[adapter_name].bias)  # the adapter starts as a no-op, bias included

    # ---- lora_bias: lora_B's bias merges into the base layer's bias (peft's rule: never creates one)
    def merge(self, adapter_names: list[str] | None = None, safe_merge: bool = False) -> None:
        names = self.computing_adapters if adapter_names is None else list(adapter_names)
        todo = [n for n in names if n in self.adapter_names and n not in self.merged_adapters]
        new_bias = merged_lora_bias(self, todo, sign=1.0, check_finite=safe_merge)
        super().merge(names, safe_merge)
        if new_bias is not None:
            self.base_layer.bias.data.copy_(new_bias)

    def unmerge(self) -> None:
        new_bias = merged_lora_bias(self, list(self.merged_adapters), sign=-1.0, check_finite=False)
        super().unmerge()
        if new_bias is not None:
            self.base_layer.bias.data.copy_(new_bias)

    def merge_refusal(self, adapter_name: str) -> str | None:
        if self.lora_bias.get(adapter_name) and getattr(self.base_layer, "bias", None) is None:
            return ("Impossible to merge LoRA with `lora_bias=True` because the base layer has no bias: adapter "  # peft's words
                    f"{adapter_name!r} on {self.key!r} ({type(self.base_layer).__name__}); keep the adapter unmerged")
        return super().merge_refusal(adapter_name)

    def merge_is_finite(self, adapter_name: str) -> bool:
        bias = merged_lora_bias(self, [adapter_name], sign=1.0, check_finite=False)
        return super().merge_is_finite(adapter_name) and (bias is None or bool(torch.isfinite(bias).all()))

    def delta(self, adapter_name: str, x: torch.Tensor, base_out: torch.Tensor | None = None) -> torch.Tensor:
        """What the adapter adds to the base output; DoRA adapters use ``base_out`` (the running
        output) when given, and compute the base part themselves otherwise."""
        xd = self.adapter_input(adapter_name, x)
        if adapter_name in self.lora_magnitude_vector:
            return dora_delta(self, adapter_name, x, xd, base_out)
        return self.lowrank(adapter_name, xd)

    def adapter_input(self, adapter_name: str, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the adapter's dtype, after its dropout."""
        return self.lora_dropout[adapter_name](x.to(self.lora_A[adapter_name].weight.dtype))

    def lowrank(self, adapter_name: str, x: torch.Tensor) -> torch.Tensor:
        """``scaling * B A x`` for an input already cast and dropped out."""
        return self.lora_B[adapter_name](self.lora_A[adapter_name](x)) * self.scaling[adapter_name]

    @abc.abstractmethod
    def lowrank_weight(self, adapter_name: str) -> torch.Tensor:
        """``scaling * B A`` in the base weight's layout (plain LoRA's merge delta)."""

    # ---- the adapter as a product of (units, K) rows: adapter arithmetic (peftkit.arithmetic) and hotswap
    # Why this layer kind's A and B are no plain (r, ...) / (..., r, ...) pair of one weight's update
    # (None: they are); the layer kinds with experts, grouped or two projections set it.
    factor_layout_refusal: str | None = None
    # How many equal blocks A's rank axis comes in. A grouped convolution's lora_B has the base's
    # groups, so block g of A's channels feeds group g of B, and B's rank axis holds one block
    # (r / groups columns). Rank padding and hotswap pad each block; 1 everywhere else.
    rank_blocks: int = 1

    @property
    def hotswap_refusal(self) -> str | None:
        """Why hotswap and rank padding cannot handle this layer's A and B (None: they can). The
        factor layouts arithmetic refuses, except those described by :attr:`rank_blocks`."""
        return self.factor_layout_refusal

    def lowrank_parameters(self, adapter_name: str) -> tuple[nn.Parameter, nn.Parameter]:
        """The stored A and B tensors; the rank is A's first axis and B's second in every layer type
        (B's holds ``r / rank_blocks``)."""
        if self.hotswap_refusal:
            raise AdapterError(f"{self.key!r}: {self.hotswap_refusal}; hotswap and rank padding are not "
                               "available for it (load the adapter with load_adapter instead)")
        params = [p for _, p in self.adapter_parameters(adapter_name)]
        if len(params) < 2:  # ensure_weight_tying: the factors are views of the tied embedding's tensors
            raise AdapterError(f"{self.key!r}: adapter {adapter_name!r} is tied to the input embedding's "
                               "(ensure_weight_tying), whose tensors it reads; write them on the embedding's layer")
        return params[0], params[1]

    def lowrank_factors(self, adapter_name: str) -> tuple[torch.Tensor, torch.Tensor, float] | None:
        """``(B, A, scaling)`` with B, A as ``(units, r)`` and ``(r, K)`` rows (``weight_rows`` of the
        delta is ``scaling * B @ A``), or None for a DoRA adapter or one with a ``lora_bias``, whose
        change is not that product alone."""
        if adapter_name in self.lora_magnitude_vector or self.lora_bias.get(adapter_name):
            return None
        try:
            _, a, b = self.dora_rows(adapter_name)
        except NotImplementedError:  # a layer type without a row layout
            return None
        return b, a, self.scaling[adapter_name]

    def set_lowrank_factors(self, adapter_name: str, b: torch.Tensor, a: torch.Tensor) -> None:
        """Write ``(units, r)`` / ``(r, K)`` rows into the adapter's B and A (same rank as stored)."""
        stored_a, stored_b = self.lowrank_parameters(adapter_name)
        with torch.no_grad():
            stored_a.copy_(a.reshape(stored_a.shape))
            stored_b.copy_(b.reshape(stored_b.shape))

    def weight_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        """A tensor in ``base_layer.weight``'s layout as ``(units, K)`` rows (inverse of ``dora_weight_layout``)."""
        raise AdapterError(f"{type(self).__name__} ({self.key!r}) has no row layout for adapter arithmetic")


def _weight_of(linear: nn.Module) -> torch.Tensor:
    """``linear.weight`` without ``Module.__getattr__`` where it is a plain parameter."""
    weight = linear._parameters.get("weight")
    return weight if weight is not None else linear.weight


class LoraLinear(LoraLayer):
    """LoRA on ``nn.Linear``, or on GPT-2's ``Conv1D`` with ``fan_in_fan_out=True``."""

    # One fused autograd node for the common case (see peftkit.kernels.lora_linear); set to
    # False to compare against the plain path.
    use_fused: bool = True

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if (args or kwargs or not self.use_fused or self.disabled or self.row_adapters is not None
                or self.merged_adapters or len(self.computing_adapters) != 1):
            return super().forward(x, *args, **kwargs)
        name = self.computing_adapters[0]
        # Sub-modules and parameters are read from nn.Module's own dicts: each attribute lookup
        # through nn.Module.__getattr__ costs ~1.2 us, which adds up to ~15% of a CPU decode step
        # (one call per adapted layer per token). The dicts are what __getattr__ reads anyway.
        modules = self._modules
        drop = modules["lora_dropout"]._modules[name]
        p = drop.p if isinstance(drop, nn.Dropout) else 0.0
        # _weight_of: a tied adapter's factors are views of the embedding's (peftkit.weight_tying)
        a = _weight_of(modules["lora_A"]._modules[name])
        b = _weight_of(modules["lora_B"]._modules[name])
        if modules["lora_B"]._modules[name]._parameters.get("bias") is not None:
            return super().forward(x)  # lora_bias: the fused kernel has no bias term for B
        if isinstance(self.scaling[name], torch.Tensor):
            # prepare_model_for_compiled_hotswap made it a tensor; the kernels take a Python number, which
            # torch.compile would read out and specialise on: the plain path keeps it a graph input
            return super().forward(x)
        if name in modules["lora_magnitude_vector"]._modules:
            base = modules["base_layer"]
            if self._dora_fast_path_applies(x, name, base):
                return dora_linear(x, self.dora_rows(name)[0], base.bias, a, b, self.lora_magnitude_vector[name].weight,
                                   weight_norm(self, name), self.scaling[name], p, self.training)
        else:
            fused = self.fused_weight()
            if fused is not None and fast_path_applies(x, fused[0], a):
                return lora_linear(x, fused[0], fused[1], a, b, self.scaling[name], p, self.training)
        return super().forward(x)

    def fused_weight(self):
        """``(weight, bias)`` for the fused kernel when the base is a plain ``nn.Linear``, else None
        (quantized bases give a dequantizing weight source instead: peftkit.quantized.layers)."""
        base = self._modules["base_layer"]
        if type(base) is nn.Linear and not self.fan_in_fan_out:
            return base._parameters["weight"], base._parameters["bias"]
        return None

    def _dora_fast_path_applies(self, x: torch.Tensor, name: str, base: nn.Module) -> bool:
        """DoRA's fused node covers ``nn.Linear`` and GPT-2's ``Conv1D`` (fp32 adapters on a half
        base too), unless the base term is to see the dropped input (``dora_base_sees_dropout``)."""
        dropped_base = self.dora_base_sees_dropout and self.training and isinstance(self.lora_dropout[name], nn.Dropout)
        plain = type(base) is nn.Linear or is_conv1d(base)
        return plain and not dropped_base and dora_fast_path_applies(x, base.weight)

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: "LoraConfig", key: str, fan_in_fan_out: bool = False):
        self.fan_in_fan_out = fan_in_fan_out  # set before the first add_adapter, which may read it
        self._stacks = multi_lora.StackCache()
        super().__init__(base_layer, adapter_name, config, key)

    def _forward_mixed(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        """Mixed batches in two batched matmuls (see peftkit.kernels.multi_lora); the generic
        per-adapter loop where that does not apply (dropout while training, DoRA, heavy padding)."""
        names = tuple(rows_for_batch(self.row_adapters, x.shape[0]))  # generate's beams / samples repeat rows
        # plain dict lookups below: Module.__getattr__ per adapter cost ~100 us a layer with 16 adapters
        a_modules, b_modules = self._modules["lora_A"]._modules, self._modules["lora_B"]._modules
        present, padding = (), 0.0
        if not args and not kwargs and not self.merged_adapters:
            present, padding = multi_lora.adapters_in_rows(names, frozenset(a_modules))
        special = getattr(self, "lora_magnitude_vector", {})  # DoRA / lora_bias adapters take the generic path
        if (not present or padding > multi_lora.MAX_PADDING
                or any(n in special or self.lora_bias.get(n) for n in present)
                or (self.training and any(isinstance(self.lora_dropout[n], nn.Dropout) for n in present))):
            return super()._forward_mixed(x, *args, **kwargs)
        weights = [(_weight_of(a_modules[n]), _weight_of(b_modules[n]), self.scaling[n]) for n in present]
        slots, a_stack, b_stack = self._stacks.get(present, weights)
        plan = multi_lora.row_plan(names, slots, x.device)
        return multi_lora.add_mixed_lora_(self.base_layer(x), x, plan, a_stack, b_stack)

    @property
    def in_out(self) -> tuple[int, int]:
        shape = self.base_weight_info()[0]
        return (shape[0], shape[1]) if self.fan_in_fan_out else (shape[1], shape[0])

    def create_tensors(self, adapter_name: str, r: int) -> None:
        in_features, out_features = self.in_out
        self.lora_A[adapter_name] = nn.Linear(in_features, r, bias=False)
        self.lora_B[adapter_name] = nn.Linear(r, out_features, bias=self.lora_bias[adapter_name])

    def init_tensors(self, adapter_name: str, init: bool | str) -> None:
        if isinstance(init, str) and (init == "olora" or init.startswith("pissa")):
            self._init_from_base_weight(adapter_name, init)
        else:
            super().init_tensors(adapter_name, init)

    def _init_from_base_weight(self, adapter_name: str, init: str) -> None:
        """PiSSA (principal singular vectors) or OLoRA (QR) initialisation. The adapter starts as
        the top-r part of W and the base keeps the residual, so outputs are unchanged at start but
        the base weights are modified: save the adapter with the residual base, as with peft."""
        w = self.base_weight().detach().float()
        w = w.T if self.fan_in_fan_out else w  # (out, in)
        r, scale = self.r[adapter_name], self.scaling[adapter_name]
        if init == "olora":
            q, rr = torch.linalg.qr(w)
            a, b = rr[:r].contiguous(), q[:, :r].contiguous()
        else:
            if init == "pissa":
                u, s, vh = torch.linalg.svd(w, full_matrices=False)
                u, s, vh = u[:, :r], s[:r], vh[:r]
            else:  # "pissa_niter_<n>": randomised SVD, much faster on large layers
                niter = int(init.rsplit("_", 1)[-1])
                u, s, v = torch.svd_lowrank(w, q=r, niter=niter)
                vh = v.T
            root = torch.sqrt(s / scale)
            a, b = root[:, None] * vh, u * root[None, :]
        self.lora_A[adapter_name].weight.copy_(a)
        self.lora_B[adapter_name].weight.copy_(b)
        residual = w - scale * (b @ a)
        self.set_base_weight(residual.T if self.fan_in_fan_out else residual)
        self._dora_norms.clear()  # .data writes do not bump the weight's version

    supports_dora = True

    def dora_rows(self, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        w = self.base_weight()
        return (w.t() if self.fan_in_fan_out else w), self.lora_A[name].weight, self.lora_B[name].weight

    def dora_weight_layout(self, rows: torch.Tensor) -> torch.Tensor:
        return rows.t() if self.fan_in_fan_out else rows

    def weight_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.t() if self.fan_in_fan_out else tensor

    def dora_base(self, x: torch.Tensor) -> torch.Tensor:
        w = self.base_weight()
        return F.linear(x, (w.t() if self.fan_in_fan_out else w).to(x.dtype))

    def lowrank_weight(self, adapter_name: str) -> torch.Tensor:
        a, b = self.lora_A[adapter_name].weight, self.lora_B[adapter_name].weight
        delta = (b @ a) * self.scaling[adapter_name]
        return delta.T if self.fan_in_fan_out else delta

    def add_delta_(self, weight: torch.Tensor, adapter_name: str, sign: float) -> None:
        a, b = self.lora_A[adapter_name].weight, self.lora_B[adapter_name].weight
        if a.dtype != weight.dtype or adapter_name in self.lora_magnitude_vector:
            # fp32 adapters on a half-precision base (the generic path casts), or DoRA
            return super().add_delta_(weight, adapter_name, sign)
        alpha = sign * self.scaling[adapter_name]
        with torch.no_grad():
            if self.fan_in_fan_out:
                weight.addmm_(a.t(), b.t(), alpha=alpha)  # Conv1D stores (in, out)
            else:
                weight.addmm_(b, a, alpha=alpha)


class LoraEmbedding(LoraLayer):
    """LoRA on ``nn.Embedding``: ``lora_embedding_A`` (r x vocab) is looked up like an embedding
    table, then ``lora_embedding_B`` (dim x r) maps it up. A starts at zero, B random."""

    adapter_param_names = ("lora_embedding_A", "lora_embedding_B", MAGNITUDE)
    _tensor_holder = nn.ParameterDict
    supports_lora_bias = False  # the tables are bare parameters (peft refuses it too)
    supports_dora = True  # one magnitude per embedding dimension (a column of the table), as peft

    def create_tensors(self, adapter_name: str, r: int) -> None:
        num, dim = self.base_layer.weight.shape
        self.lora_embedding_A[adapter_name] = nn.Parameter(torch.randn(r, num))
        self.lora_embedding_B[adapter_name] = nn.Parameter(torch.randn(dim, r))

    def init_tensors(self, adapter_name: str, init: bool | str) -> None:
        if isinstance(init, str) and init != "gaussian":
            super().init_tensors(adapter_name, init)  # PiSSA/OLoRA: a clear error, not a silent default
        if init is not False:  # True and "gaussian" start embeddings at A = 0, B ~ N(0, 1), as peft does
            nn.init.zeros_(self.lora_embedding_A[adapter_name])
            nn.init.normal_(self.lora_embedding_B[adapter_name])

    def adapter_input(self, adapter_name: str, x: torch.Tensor) -> torch.Tensor:
        return x  # token ids; embeddings have no LoRA dropout (as peft)

    def lowrank(self, adapter_name: str, x: torch.Tensor) -> torch.Tensor:
        a, b = self.lora_embedding_A[adapter_name], self.lora_embedding_B[adapter_name]
        e = self.base_layer
        looked_up = F.embedding(x, a.T, e.padding_idx, e.max_norm, e.norm_type, e.scale_grad_by_freq, e.sparse)
        return (looked_up @ b.T) * self.scaling[adapter_name]

    def lowrank_weight(self, adapter_name: str) -> torch.Tensor:
        a, b = self.lora_embedding_A[adapter_name], self.lora_embedding_B[adapter_name]
        return (b @ a).T * self.scaling[adapter_name]

    def dora_rows(self, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.base_layer.weight.t(), self.lora_embedding_A[name], self.lora_embedding_B[name]

    def dora_weight_layout(self, rows: torch.Tensor) -> torch.Tensor:
        return rows.t()

    def weight_rows(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.t()

    def dora_base(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x)
