"""YAML as run configs use it: YAML 1.2 numbers (``2e-4`` is a float, as PyYAML's YAML 1.1 rules
would not have it), safe types only, and limits that a small file cannot get around.

A YAML file can be tiny and still describe a huge value: aliases that repeat aliases ("billion
laughs") expand exponentially, an alias can point at its own node, and nesting can be deep
enough to exhaust the stack. The loader here counts while composing, before any Python value is
built: at most :data:`MAX_ALIASES` aliases, :data:`MAX_DEPTH` levels, and :data:`MAX_NODES`
values once every alias is expanded; past that, a :class:`YamlLimitError` (a ``yaml.YAMLError``
with the line and column) is raised.

>>> load_yaml("lr: 2e-4")
{'lr': 0.0002}
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.composer import ComposerError

MAX_ALIASES = 100
MAX_DEPTH = 64
MAX_NODES = 100_000
MAX_BYTES = 4 << 20  # a run config is a few kB; generated ones (sweeps) stay far below this


class YamlLimitError(ComposerError):
    """A YAML document over one of the limits of this module (or an alias that contains itself)."""


def _node_count(node: yaml.Node, sizes: dict[int, int], mark: Any) -> int:
    """Values in ``node`` with every alias expanded, memoised per node (so counting is linear in the
    file even when the expansion is exponential); a node reached from inside itself is an error."""
    key = id(node)
    if key in sizes:
        if sizes[key] < 0:
            raise YamlLimitError(None, None, "an alias refers to a value that contains it (a recursive value)", mark)
        return sizes[key]
    sizes[key] = -1
    children: list[yaml.Node] = []
    if isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        children = [part for pair in node.value for part in pair]
    total = 1
    for child in children:
        total += _node_count(child, sizes, mark)
        if total > MAX_NODES:
            raise YamlLimitError(None, None, f"the document expands to more than {MAX_NODES:,d} values "
                                             "(aliases repeating aliases?)", mark)
    sizes[key] = total
    return total


class Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with YAML 1.2 floats and the limits of this module."""

    def __init__(self, stream: Any):
        super().__init__(stream)
        self._aliases = 0
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise YamlLimitError(None, None, f"more than {MAX_ALIASES} aliases (*name)", self.peek_event().start_mark)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise YamlLimitError(None, None, f"nested more than {MAX_DEPTH} levels deep", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self) -> Any:
        node = super().compose_document()
        if node is not None:
            _node_count(node, {}, node.start_mark)
        return node


class Dumper(yaml.SafeDumper):
    """``yaml.SafeDumper`` writing floats that :class:`Loader` reads back as floats."""


_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*\.?[0-9_]*|\.[0-9_]+)[eE][-+]?[0-9]+$")
for _cls in (Loader, Dumper):
    _cls.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def load_yaml(text: str) -> Any:
    """Parse one YAML document with :class:`Loader` (raises ``yaml.YAMLError``, including
    :class:`YamlLimitError`).

    Example:
        >>> load_yaml("a: &x [1, 2]\\nb: *x")
        {'a': [1, 2], 'b': [1, 2]}
    """
    if len(text) > MAX_BYTES:
        raise YamlLimitError(None, None, f"longer than {MAX_BYTES:,d} characters", None)
    return yaml.load(text, Loader=Loader)
