"""``--where`` filters and ``--sort`` keys over the index's flat fields (see
:mod:`peftkit.tracking.records` for the keys), turned into SQL.

A filter is ``KEY OP VALUE`` with OP one of ``=  !=  >  <  >=  <=``; the value is read as YAML, so
``adapter.r=16`` and ``train.lr<=3e-4`` compare numbers, ``adapter.use_rslora=true`` a boolean,
``status=completed`` a string, ``adapter.target_modules=[q_proj, v_proj]`` a list. A ``*`` in a
string value is a wildcard (``name=sweep*``). ``parent=null`` matches runs without the key. Several
filters must all hold. A sort key takes a ``-`` prefix for descending order; runs without the key
come last. Unknown keys are an error with "did you mean".

>>> parse_condition("train.lr<=3e-4")
Condition(key='train.lr', op='<=', value=0.0003)
"""

from __future__ import annotations

import datetime as dt
import difflib
from dataclasses import dataclass
from typing import Any, Iterable, Optional

import yaml

from ..errors import PeftkitError
from .index import RunIndex, encode
from .records import RUN_KEYS, Run

OPERATORS = ("!=", ">=", "<=", "=", ">", "<")  # two-character ones first


class QueryError(PeftkitError, ValueError):
    """A ``--where`` or ``--sort`` expression that cannot be used."""


@dataclass
class Condition:
    key: str
    op: str
    value: Any


def parse_condition(text: str) -> Condition:
    """``"adapter.r=16"`` -> ``Condition("adapter.r", "=", 16)``."""
    found = [(text.find(op), op) for op in OPERATORS if op in text]
    if not found:
        raise QueryError(f"--where {text!r}: expected KEY=VALUE (or !=, >, <, >=, <=), e.g. adapter.r=16")
    pos = min(p for p, _ in found)
    op = max((o for p, o in found if p == pos), key=len)
    key, raw = text[:pos].strip(), text[pos + len(op):].strip()
    if not key or not raw:
        raise QueryError(f"--where {text!r}: needs a key and a value, e.g. status=completed")
    from ..train.config import _Loader  # the run config's own YAML reading: 1e-4 is a number

    try:
        value = yaml.load(raw, Loader=_Loader)
    except yaml.YAMLError:
        value = raw
    if isinstance(value, (dt.date, dt.datetime)):
        value = raw  # dates compare as the ISO text that run.json holds
    return Condition(key, op, value)


def _check_keys(keys: Iterable[str], known: list[str], what: str) -> None:
    if not known:  # an empty runs folder: nothing to filter, nothing to complain about
        return
    known = sorted(set(known) | set(RUN_KEYS))
    for key in keys:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else \
                "; see `peftkit runs show RUN --fields` for the keys of a run"
            raise QueryError(f"{what} {key!r}: no run has this key{hint}")


def _condition_sql(c: Condition) -> tuple[str, list[Any]]:
    exists = "EXISTS (SELECT 1 FROM fields f WHERE f.id = runs.id AND f.key = ? AND {})"
    if c.value is None:
        if c.op not in ("=", "!="):
            raise QueryError(f"--where {c.key}{c.op}null: null only goes with = or !=")
        return ("NOT " if c.op == "=" else "") + exists.format("1"), [c.key]
    text, number = encode(c.value)
    if number is not None:
        test, param = f"f.num {'=' if c.op == '!=' else c.op} ?", number
    elif "*" in text and c.op in ("=", "!="):
        test, param = "f.text GLOB ?", text
    else:
        test, param = f"f.text {'=' if c.op == '!=' else c.op} ?", text
    return ("NOT " if c.op == "!=" else "") + exists.format(test), [c.key, param]


def select(index: RunIndex, where: Iterable[str] = (), sort: Optional[str] = None,
           only: Optional[list[str]] = None) -> list[Run]:
    """Runs of ``index`` that pass every ``where`` filter (and are among ``only`` ids, if given),
    ordered by ``sort`` (comma-separated keys, ``-`` for descending), else oldest first."""
    conditions = [parse_condition(w) for w in where]
    sort_keys = [k.strip() for k in (sort or "").split(",") if k.strip()]
    known = index.keys()
    _check_keys([c.key for c in conditions], known, "--where")
    _check_keys([k.lstrip("-") for k in sort_keys], known, "--sort")
    clauses, params = ["1"], []
    for c in conditions:
        sql, values = _condition_sql(c)
        clauses.append(sql)
        params += values
    if only is not None:
        clauses.append(f"runs.id IN ({', '.join('?' * len(only))})" if only else "0")
        params += only
    joins, order, order_params = [], [], []
    for i, key in enumerate(sort_keys):
        direction = "DESC" if key.startswith("-") else "ASC"
        joins.append(f"LEFT JOIN fields s{i} ON s{i}.id = runs.id AND s{i}.key = ?")
        order_params.append(key.lstrip("-"))
        order += [f"s{i}.id IS NULL", f"s{i}.num {direction}", f"s{i}.text {direction}"]
    order += ["runs.started", "runs.id"]
    return index.query(" AND ".join(clauses), params, ", ".join(order), order_params, " ".join(joins))
