"""Bottleneck adapters: small two-layer networks inserted after (or beside) transformer blocks.

* ``houlsby`` (Houlsby et al., 2019): an adapter after the attention block and after the
  feed-forward block, each ``h + up(act(down(h)))``.
* ``pfeiffer`` (Pfeiffer et al., 2021): after the feed-forward block only.
* ``parallel`` (He et al., 2022): beside the feed-forward block, ``h + up(act(down(x)))`` with
  ``x`` the block's input.

Adapters attach to blocks, not to single layers, so this method places them itself (the
``on_add`` hook): ``attn_modules`` / ``ffn_modules`` name the blocks with peft's matching rules,
with defaults per model type in :data:`BLOCK_DEFAULTS`. The layer lives in
:mod:`peftkit.methods.bottleneck_layers`; the checkpoint format is in ``docs/formats.md``.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Optional, Union

import torch.nn as nn
from pydantic import AfterValidator, BeforeValidator, field_validator

from ..config import PeftConfig, _normalise_names, finite_number, PeftType
from ..errors import TargetError
from ..registry import MethodSpec, register_method
from ..targets import iter_plain_modules, is_target, modules_to_save_for, name_matches
from ..tree import get_module, set_module
from .bottleneck_layers import ACTIVATIONS, BottleneckLayer
from .lora_layers import is_conv1d

DEFAULT_REDUCTION_FACTOR = 16

# (attention block, feed-forward block) per model type: modules whose output is the block's
# hidden states, before the residual addition. BERT-style models add the residual inside a
# module together with the LayerNorm, so there the adapter goes after the output projection.
_BERT = (r".*\.attention\.output\.dense", r".*\.layer\.\d+\.output\.dense")
BLOCK_DEFAULTS: dict[str, tuple[Union[str, list[str]], Union[str, list[str]]]] = {
    **{t: (["self_attn"], ["mlp"]) for t in (
        "llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "olmo", "starcoder2")},
    "gpt2": (["attn"], ["mlp"]),
    "gptj": (["attn"], ["mlp"]),
    "gpt_neox": (["attention"], ["mlp"]),
    "falcon": (["self_attention"], ["mlp"]),
    "bloom": (["self_attention"], ["mlp"]),
    "opt": (["self_attn"], ["fc2"]),
    "distilbert": (["attention"], ["ffn"]),
    "t5": (["SelfAttention", "EncDecAttention"], ["DenseReluDense", "DenseGatedActDense"]),
    "mt5": (["SelfAttention", "EncDecAttention"], ["DenseReluDense", "DenseGatedActDense"]),
    **{t: _BERT for t in ("bert", "roberta", "xlm-roberta", "electra")},
}

def _as_list(value: Any) -> Any:
    value = _normalise_names(value, "modules_to_save")
    return [value] if isinstance(value, str) else value


def _non_negative(value: Any) -> Any:
    if any(i < 0 for i in ([value] if isinstance(value, int) else (value or []))):
        raise ValueError("layer indices must be >= 0")
    return value


# Module-name fields validated as in TargetedConfig (which this config does not extend: bottleneck
# adapters attach to blocks found by their own fields, not through target_modules).
Names = Annotated[Optional[Union[str, list[str]]], BeforeValidator(lambda v: _normalise_names(v, ""))]
SavedNames = Annotated[Optional[list[str]], BeforeValidator(_as_list)]
LayerIndices = Annotated[Optional[Union[int, list[int]]], AfterValidator(_non_negative)]


class BottleneckConfig(PeftConfig):
    """Configuration of bottleneck adapters (peftkit's own method; peft has none).

    Example:
        >>> from peftkit import BottleneckConfig
        >>> cfg = BottleneckConfig(adapter_type="pfeiffer", reduction_factor=8, non_linearity="gelu")
        >>> cfg.size_for(768)
        96
    """

    peft_type: ClassVar[str] = PeftType.BOTTLENECK

    adapter_type: Literal["houlsby", "pfeiffer", "parallel"] = "houlsby"
    # The adapter width: give one of the two (neither: hidden size / 16).
    bottleneck_size: Optional[int] = None
    reduction_factor: Optional[float] = None
    non_linearity: Literal[tuple(ACTIVATIONS)] = "relu"  # type: ignore[valid-type]
    # Multiplies the adapter's output (parallel adapters often use 4.0).
    scaling: float = 1.0
    # True: up-projection zero, so a new adapter changes nothing. False: random (for tests).
    init_weights: bool = True
    # Blocks to adapt, by peft's rules (names / ".suffix" / a regex); unset: BLOCK_DEFAULTS.
    attn_modules: Names = None
    ffn_modules: Names = None
    exclude_modules: Names = None
    layers_to_transform: LayerIndices = None
    layers_pattern: Optional[Union[str, list[str]]] = None
    modules_to_save: SavedNames = None

    @field_validator("bottleneck_size", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Any:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise ValueError("must be a positive integer (the adapter width, e.g. 64)")
        return value

    @field_validator("reduction_factor", "scaling", mode="before")
    @classmethod
    def _number(cls, value: Any, info: Any) -> Any:
        if value is None and info.field_name == "reduction_factor":
            return value
        finite_number(value, info.field_name)
        if info.field_name == "reduction_factor" and value <= 0:
            raise ValueError("must be > 0 (hidden size / adapter width, e.g. 16)")
        return value

    def check(self) -> list[tuple[str, str]]:
        problems = super().check()
        if self.bottleneck_size is not None and self.reduction_factor is not None:
            problems.append(("reduction_factor", "set either bottleneck_size or reduction_factor, not both"))
        if self.attn_modules is not None and self.adapter_type != "houlsby":
            problems.append(("attn_modules", f"is only used by adapter_type='houlsby' (this is {self.adapter_type!r}); remove it"))
        regex = any(isinstance(v, str) for v in (self.attn_modules, self.ffn_modules))
        if regex and self.layers_to_transform is not None:
            problems.append(("layers_to_transform", "cannot be combined with a regex attn_modules/ffn_modules; put the layer index in the regex"))
        if self.layers_pattern and self.layers_to_transform is None:
            problems.append(("layers_pattern", "only has an effect together with layers_to_transform; set both"))
        return problems

    def size_for(self, hidden: int) -> int:
        """The adapter width for a block of width ``hidden``."""
        if self.bottleneck_size is not None:
            return self.bottleneck_size
        return max(1, round(hidden / (self.reduction_factor or DEFAULT_REDUCTION_FACTOR)))

    def roles(self) -> list[str]:
        """The config fields whose blocks get an adapter: "attn_modules" and/or "ffn_modules"."""
        return ["attn_modules", "ffn_modules"] if self.adapter_type == "houlsby" else ["ffn_modules"]


# ---------------------------------------------------------------------------------------------- placement
def _model_type(model: nn.Module) -> Optional[str]:
    return getattr(getattr(model, "config", None), "model_type", None)


def _patterns(model: nn.Module, config: BottleneckConfig, role: str) -> Union[str, list[str]]:
    given = getattr(config, role)
    if given is not None:
        return given
    model_type = _model_type(model)
    if model_type not in BLOCK_DEFAULTS:
        raise TargetError(
            f"{role} is not set and peftkit has no default for model type {model_type!r}; name the block modules, "
            f"e.g. {role}=['mlp'] (module names of this model: {_candidates(model)})"
        )
    return BLOCK_DEFAULTS[model_type][0 if role == "attn_modules" else 1]


def _candidates(model: nn.Module, limit: int = 24) -> str:
    """Module paths inside the first numbered block (e.g. ``self_attn``, ``mlp.down_proj``): the
    names an ``attn_modules`` / ``ffn_modules`` entry can use."""
    keys = [key for key, _ in iter_plain_modules(model)]
    block = next((k for k in keys if k.rsplit(".", 1)[-1].isdigit()), None)
    names = [k[len(block) + 1:] for k in keys if block and k.startswith(block + ".")]
    names = names or sorted({k.rsplit(".", 1)[-1] for k in keys})
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")


def find_blocks(model: nn.Module, config: BottleneckConfig) -> list[str]:
    """Keys of the blocks that get an adapter under ``config``, in model order.

    Example:
        >>> find_blocks(tiny_llama, BottleneckConfig(adapter_type="pfeiffer"))  # doctest: +SKIP
        ['model.layers.0.mlp', 'model.layers.1.mlp']
    """
    keys = [key for key, _ in iter_plain_modules(model)]
    found: list[str] = []
    for role in config.roles():
        patterns = _patterns(model, config, role)
        matched = [k for k in keys if is_target(k, config, patterns)]  # type: ignore[arg-type]
        if not matched:
            raise TargetError(
                f"{role}={patterns!r} matched no module of {type(model).__name__}"
                f"{' (after exclude_modules / layers_to_transform)' if any(name_matches(k, patterns) for k in keys) else ''}. "
                f"Module names in its first block: {_candidates(model)}. Use one of these, a '.suffix' or a regex."
            )
        found += matched
    nested = [(a, b) for a in found for b in found if b.startswith(a + ".")]
    if nested or len(set(found)) < len(found):
        a, b = nested[0] if nested else (next(k for k in found if found.count(k) > 1),) * 2
        raise TargetError(f"bottleneck blocks must not overlap: {b!r} is matched as well as {a!r}; narrow attn_modules/ffn_modules")
    return [k for k in keys if k in found]


def _linears(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, nn.Linear) or is_conv1d(m)]


def _features(m: nn.Module) -> tuple[int, int]:
    return (m.in_features, m.out_features) if isinstance(m, nn.Linear) else (m.weight.shape[0], m.nf)


def block_widths(model: nn.Module, key: str) -> tuple[int, int]:
    """(input, output) features of the block at ``key``: a linear layer's own; else the model's
    hidden size (a block maps hidden states to hidden states); else its first / last linear layer."""
    module = get_module(model, key)
    if isinstance(module, nn.Linear) or is_conv1d(module):
        return _features(module)
    config = getattr(model, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = getattr(text, "hidden_size", None)
    if isinstance(hidden, int):
        return hidden, hidden
    linears = _linears(module)
    if linears:
        return _features(linears[0])[0], _features(linears[-1])[1]
    raise TargetError(
        f"cannot tell the width of block {key!r} ({type(module).__name__}): it has no linear layer and the model "
        "config has no hidden_size; target a module that outputs the hidden states (e.g. the block's output projection)"
    )


def _on_add(peft_model: Any, adapter_name: str, config: BottleneckConfig) -> None:
    """Wrap each block (or add to its existing wrapper); every block is checked before any changes."""
    model = peft_model.get_base_model()
    blocks = find_blocks(model, config)
    widths = {key: block_widths(model, key) for key in blocks if not isinstance(get_module(model, key), BottleneckLayer)}
    saved = peft_model.peft_config[adapter_name]
    for role in config.roles():  # the saved config names the blocks explicitly
        if getattr(saved, role) is None:
            setattr(saved, role, _patterns(model, config, role))
    heads = modules_to_save_for(saved)  # a new classification head trains in full
    if heads != (saved.modules_to_save or []):
        saved.modules_to_save = heads
        peft_model._wrap_modules_to_save(adapter_name, saved)
    for key in blocks:
        layer = get_module(model, key)
        if not isinstance(layer, BottleneckLayer):
            layer = BottleneckLayer(layer, key, *widths[key])
            set_module(model, key, layer)
        layer.add_adapter(adapter_name, config, key, parallel=config.adapter_type == "parallel")


BOTTLENECK = register_method(
    MethodSpec(peft_type="BOTTLENECK", config_cls=BottleneckConfig, layer_cls=BottleneckLayer, on_add=_on_add,
               uses_shared_state=True)
)
