"""Which method a peft test exercises, and whether it applies to peftkit (and why not).

A test's method comes from its parametrization (the config class or config instance it is given,
plus LoRA options such as ``use_dora``), else from the words of its class and function names,
else it is ``general`` (method-agnostic). A test is not applicable when its method or LoRA variant
is not in peftkit, when peft's suite skips it, when it needs the hub or an optional package the lock
lacks, or when it checks a deliberate difference (``differences.py``).

Example::

    >>> method_of({"config_cls": type("LoraConfig", (), {}), "config_kwargs": {"use_dora": True}}, "T::test_x")
    'DoRA'
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Optional

# peftkit's methods under their display names; every other method is "not in peftkit".
IMPLEMENTED = {
    "Lora": "LoRA", "AdaLora": "AdaLoRA", "IA3": "IA3", "LoHa": "LoHa", "LoKr": "LoKr", "Vera": "VeRA",
    "LNTuning": "LN tuning", "PromptTuning": "prompt tuning", "PromptEncoder": "P-tuning",
    "PrefixTuning": "prefix tuning",
}
METHOD_ORDER = ["LoRA", "DoRA", "AdaLoRA", "IA3", "LoHa", "LoKr", "VeRA", "LN tuning", "prompt tuning",
                "P-tuning", "prefix tuning", "general"]
NOT_IN_PEFTKIT = "not in peftkit"

# LoRA options that select a variant peftkit does not implement (a non-default value of any of them).
LORA_VARIANT_OPTIONS = {
    "use_qalora": "QALoRA", "megatron_config": "Megatron LoRA", "loftq_config": "LoftQ", "eva_config": "EVA",
    "corda_config": "CorDA", "lora_ga_config": "LoRA-GA", "velora_config": "VeLoRA", "kasa_config": "KaSA",
    "alora_invocation_tokens": "aLoRA", "monteclora_config": "MonteCLoRA", "use_bdlora": "BD-LoRA",
    "arrow_config": "Arrow", "trainable_token_indices": "trainable tokens",
}
LORA_VARIANT_INITS = {"eva": "EVA", "corda": "CorDA", "loftq": "LoftQ", "orthogonal": "orthogonal init",
                      "mica": "MiCA", "lora_ga": "LoRA-GA"}

# Words in a test's class or function name that name a method, most specific first. A word of up to
# four letters must be a whole word (``oft`` is not inside ``soft``); longer ones may be inside a word
# (``adalora`` in ``TestAdaLoraInitialization``).
_NAME_WORDS = [
    ("adaption_prompt", None), ("adaptionprompt", None), ("multitask", None), ("trainable_token", None),
    ("trainble_token", None),  # peft's own spelling in test_loading_model_with_trainble_tokens_...
    ("trainabletoken", None), ("vblora", None), ("randlora", None), ("tinylora", None), ("unilora", None),
    ("xlora", None), ("delora", None), ("gralora", None), ("monteclora", None), ("velora", None),
    ("bdlora", None), ("lora_ga", None), ("loraga", None), ("adamss", None), ("fourierft", None),
    ("cartridge", None), ("supertuning", None), ("shadow", None), ("waveft", None), ("peanut", None),
    ("psoft", None), ("pvera", None), ("glora", None), ("shira", None), ("lily", None), ("boft", None),
    ("corda", None), ("loftq", None), ("arrow", None), ("kasa", None), ("hira", None), ("frod", None),
    ("road", None), ("miss", None), ("poly", None), ("deft", None), ("beft", None), ("c3a", None),
    ("cpt", None), ("osf", None), ("hra", None), ("oft", None), ("eva", None), ("init_orthogonal", None),
    ("mica", None), ("megatron", None),
    # "prefixes": state-dict key prefixes (TestTunerStateDictKeyPrefixes), not prefix tuning
    ("prefixes", "general"),
    ("adalora", "AdaLoRA"), ("ln_tuning", "LN tuning"), ("lntuning", "LN tuning"), ("prefix", "prefix tuning"),
    ("p_tuning", "P-tuning"), ("prompt_encoder", "P-tuning"), ("promptencoder", "P-tuning"),
    ("prompt_tuning", "prompt tuning"), ("prompttuning", "prompt tuning"), ("prompt_learning", "prompt tuning"),
    ("dora", "DoRA"), ("loha", "LoHa"), ("lokr", "LoKr"), ("vera", "VeRA"), ("ia3", "IA3"),
    ("pissa", "LoRA"), ("olora", "LoRA"), ("lora", "LoRA"),
]


def _config_class_names(values: Iterable[Any]) -> list[tuple[str, Any]]:
    """``(class name, value)`` for every config class or config instance among ``values`` (nested
    in tuples, lists and dicts too)."""
    found = []
    for value in values:
        if isinstance(value, (tuple, list)):
            found += _config_class_names(value)
        elif isinstance(value, dict):
            found += _config_class_names(value.values())
        elif isinstance(value, type) and value.__name__.endswith("Config"):
            found.append((value.__name__, value))
        elif type(value).__name__.endswith("Config") and not isinstance(value, type):
            found.append((type(value).__name__, value))
    return found


def _method_from_class(class_name: str, options: dict) -> str:
    base = class_name[: -len("Config")]
    if base == "Lora" and options.get("use_dora"):
        return "DoRA"
    return IMPLEMENTED.get(base, f"{base} ({NOT_IN_PEFTKIT})")


def _options(params: dict[str, Any], config: Any) -> dict[str, Any]:
    """The LoRA options of a test: its ``config_kwargs`` parameters (one per adapter in two-adapter
    tests), or the fields of a config instance."""
    options: dict[str, Any] = {}
    for name, value in params.items():  # config_kwargs, or config_kwargs_1 / _2 of two-adapter tests
        if name.startswith("config_kwargs") and isinstance(value, dict):
            options.update(value)
    if config is not None and not isinstance(config, type):
        options.update({k: _read(config, k) for k in ("use_dora", "init_lora_weights", *LORA_VARIANT_OPTIONS)
                        if _read(config, k) not in (None, False)})
    return options


def _read(config: Any, field: str) -> Any:
    """A config field, or None (a stand-in for a method peftkit lacks raises on every read)."""
    try:
        return getattr(config, field, None)
    except Exception:  # noqa: BLE001 - any failure means "no such option here"
        return None


def method_of(params: dict[str, Any], nodeid: str) -> str:
    """The display name of the method a test exercises (``general`` for method-agnostic ones).

    Example::

        >>> method_of({}, "tests/test_other.py::TestVeraThing::test_save")
        'VeRA'
    """
    configs = _config_class_names(params.values())
    if configs:
        methods = [_method_from_class(name, _options(params, value)) for name, value in configs]
        foreign = [m for m in methods if NOT_IN_PEFTKIT in m]
        return foreign[0] if foreign else methods[0]
    return _method_from_words(nodeid)


def _method_from_words(nodeid: str) -> str:
    name = nodeid.split("::", 1)[-1].split("[", 1)[0]
    lowered = name.lower()
    words = set(re.findall(r"[a-z0-9]+", re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()))
    for word, method in _NAME_WORDS:
        hit = word in words if len(word) <= 4 else word in lowered
        if hit:
            return method or f"{word.replace('_', ' ')} ({NOT_IN_PEFTKIT})"
    return "general"


def static_not_applicable(params: dict[str, Any], nodeid: str) -> Optional[str]:
    """Why a test does not apply to peftkit, judged before running it (None: it applies).

    Example::

        >>> static_not_applicable({"config_kwargs": {"init_lora_weights": "eva"}}, "x::test_y")
        'LoRA variant EVA is not in peftkit'
    """
    method = method_of(params, nodeid)
    if NOT_IN_PEFTKIT in method:
        return f"peft method {method.split(' (')[0]} is not in peftkit"
    configs = _config_class_names(params.values())
    for _, config in configs or [(None, None)]:
        options = _options(params, config)
        for option, variant in LORA_VARIANT_OPTIONS.items():
            if options.get(option) not in (None, False, [], {}):
                return f"LoRA variant {variant} is not in peftkit"
        init = options.get("init_lora_weights")
        if isinstance(init, str) and init.lower() in LORA_VARIANT_INITS:
            return f"LoRA variant {LORA_VARIANT_INITS[init.lower()]} is not in peftkit"
    return None


_HUB_ERRORS = ("OfflineModeIsEnabled", "LocalEntryNotFoundError", "RepositoryNotFoundError", "GatedRepoError")


def runtime_not_applicable(error: BaseException, installed: Any = None) -> Optional[str]:
    """Why a test that failed with ``error`` does not apply (None: it is a real failure): a peft
    method or variant peftkit lacks was used, the hub was needed, or an optional package is missing.

    Example::

        >>> runtime_not_applicable(ModuleNotFoundError("No module named 'bitsandbytes'", name="bitsandbytes"))
        "needs the optional package 'bitsandbytes', not in the lock"
    """
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        kind = type(error).__name__
        if kind == "NotInPeftkit":
            return str(error)
        if kind in _HUB_ERRORS or "offline mode" in str(error).lower() or "huggingface.co" in str(error):
            return "needs the Hugging Face hub (the suite runs offline)"
        if kind in ("ConnectError", "ConnectTimeout") or "Name or service not known" in str(error):
            return "needs the network (the suite runs offline)"
        if kind == "UnknownFieldError":  # a config given a LoRA variant's option peftkit does not model
            variant = next((v for option, v in LORA_VARIANT_OPTIONS.items() if f"{option}: unknown field" in str(error)), None)
            if variant:
                return f"LoRA variant {variant} is not in peftkit"
        if isinstance(error, ModuleNotFoundError) and error.name and not error.name.startswith(("peft", "peftkit")):
            return f"needs the optional package {error.name.split('.')[0]!r}, not in the lock"
        error = error.__cause__ or error.__context__
    return None
