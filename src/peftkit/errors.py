"""Exception types. Every error peftkit raises on bad input is one of these, and its message names
the field, module or file at fault, what was wrong, and how to fix it."""

from __future__ import annotations


class PeftkitError(Exception):
    """Base class of every peftkit error."""


class ConfigError(PeftkitError, ValueError):
    """An adapter or run configuration is invalid. ``problems`` lists every ``(path, message)``."""

    def __init__(self, title: str, problems: list[tuple[str, str]]):
        self.problems = problems
        lines = "\n".join(f"  - {path}: {msg}" if path else f"  - {msg}" for path, msg in problems)
        super().__init__(f"{title}\n{lines}")


class UnknownFieldError(ConfigError, TypeError):
    """A config was given a keyword argument it has no field for. Also a ``TypeError``, which is what
    Python (and ``peft``'s dataclass configs) raise for an unexpected keyword argument."""


class ConfigTypeError(ConfigError, TypeError):
    """Config values of the wrong type (a string where a list belongs, say). Also a ``TypeError``,
    which ``peft`` raises for some of them."""


class NotAConfigError(ConfigError, TypeError):
    """A file read as an adapter config is not one (no ``peft_type``). Also a ``TypeError``, as
    ``peft`` raises for it."""


class TargetError(PeftkitError, ValueError):
    """The adapter's targets do not fit the model (nothing matched, unsupported layer type, ...)."""


class NoMatchingPeftModuleError(TargetError):
    """An adapter's ``target_modules`` selected no module of the model (every module unmatched,
    excluded by ``exclude_modules``, or trained in full as ``modules_to_save``). ``peft``'s name; a
    ``ValueError`` and a :class:`TargetError`, so code catching either keeps working.

    Example:
        >>> try:  # doctest: +SKIP
        ...     get_peft_model(model, LoraConfig(target_modules=["no_such_module"]))
        ... except NoMatchingPeftModuleError as err:
        ...     print(err)
    """


class AdapterError(PeftkitError, ValueError):
    """An adapter name is unknown, duplicated or used where it cannot be."""


class MixedBatchError(AdapterError, TypeError):
    """A module cannot compute a mixed batch (``adapter_names=``): its rows are not independent, or
    its weight is shared by every row. Also a ``TypeError``, which is what ``peft`` raises there."""


class MergeError(AdapterError, RuntimeError):
    """An adapter cannot be merged into its base layer as it is (e.g. a ``lora_B`` bias and no base
    bias to add it to). Also a ``RuntimeError``, which is what ``peft`` raises there."""


class HotswapKeyError(AdapterError, RuntimeError):
    """An adapter being hotswapped in has tensors for modules the loaded adapter has no layers on.
    Also a ``RuntimeError``, which ``peft``'s ``hotswap_adapter`` raises for it."""


class CheckpointError(PeftkitError, ValueError):
    """A saved adapter cannot be read or does not fit the model it is loaded into."""


class AdapterNotFoundError(CheckpointError, FileNotFoundError):
    """A saved adapter (its folder or one of its files) does not exist. Also a ``FileNotFoundError``,
    so code written for ``peft`` (which raises that) keeps catching it."""


class PathError(PeftkitError, ValueError):
    """A path computed from a name (an adapter's sub-folder, a run folder) would leave the folder it
    belongs in, or cannot be written."""


class CorruptFileError(PeftkitError, ValueError):
    """A file cannot be used as it is: not UTF-8, not valid JSON / YAML / safetensors, truncated,
    or over a size limit. ``path`` is the file and ``reason`` what is wrong with it."""

    def __init__(self, path: str, reason: str):
        self.path, self.reason = str(path), reason
        super().__init__(f"{path}: {reason}")


class PeftWarning(UserWarning):
    """The category of peftkit's warnings about adapters that work but not as one may expect (e.g.
    ``lora_bias`` on a layer without a bias: it trains but cannot be merged). ``peft``'s name, so
    ``warnings.filterwarnings("ignore", category=PeftWarning)`` works for code written for it.

    Example:
        >>> import warnings
        >>> warnings.simplefilter("error", PeftWarning)  # doctest: +SKIP
    """
