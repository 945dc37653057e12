"""Reading files that peftkit did not write (a downloaded adapter, a run folder someone edited):
every read is bounded before any work is done, and every failure is a
:class:`~peftkit.errors.CorruptFileError` naming the file and what is wrong with it.

- Text and JSON files have a size limit, must be UTF-8, and JSON nesting that would exhaust the
  stack is an error, not a crash.
- A safetensors file's header is read and checked (length within the file, known dtypes, every
  tensor's bytes inside the data section and matching its shape) without reading any tensor, so
  shapes can be compared with a model before a byte of tensor data is loaded.
- :func:`allocation_limit` caps the tensor elements a block of code may create: loading an
  adapter builds its layers under the limit, so an ``adapter_config.json`` that claims a huge
  rank fails at its first oversized tensor instead of allocating gigabytes.

>>> info = read_safetensors_header("adapter_model.safetensors")      # doctest: +SKIP
>>> info["base_model.model.lin1.lora_A.weight"].shape               # doctest: +SKIP
(8, 8)
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import struct
from typing import Any, Iterator, NamedTuple, Optional

import torch
from torch.overrides import TorchFunctionMode

from .errors import CheckpointError, CorruptFileError

MAX_JSON_BYTES = 64 << 20  # adapter_config.json, state.json, run.json: far below this in practice
MAX_HEADER_BYTES = 100 << 20  # the safetensors format's own limit
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
               "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8, "C64": 8}
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2")


class TensorInfo(NamedTuple):
    """One tensor as a safetensors header describes it."""

    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def read_bytes(path: str | os.PathLike, max_bytes: int) -> bytes:
    """The file's bytes, or :class:`CorruptFileError` if it is larger than ``max_bytes``."""
    with open(path, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise CorruptFileError(str(path), f"larger than the {max_bytes:,d}-byte limit for this kind of file")
    return data


def decode_utf8(data: bytes, path: str | os.PathLike) -> str:
    """``data`` as text; invalid UTF-8 is a :class:`CorruptFileError` naming the byte offset."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorruptFileError(str(path), f"not UTF-8 text (byte {e.start} is 0x{data[e.start]:02x})") from None


def read_json(path: str | os.PathLike, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """Parse a JSON file within limits (size, UTF-8, nesting depth, number length).

    Example:
        >>> read_json("out/adapter/adapter_config.json")["peft_type"]  # doctest: +SKIP
        'LORA'
    """
    text = decode_utf8(read_bytes(path, max_bytes), path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise CorruptFileError(str(path), f"not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    except RecursionError:
        raise CorruptFileError(str(path), "JSON nested too deeply") from None
    except ValueError as e:  # e.g. an integer with more digits than Python converts
        raise CorruptFileError(str(path), f"not usable JSON ({e})") from None


def read_safetensors_header(path: str | os.PathLike) -> dict[str, TensorInfo]:
    """Tensor name -> :class:`TensorInfo`, read from the header alone and checked against the file:
    a header length past the end, an unknown dtype, a negative or non-integer dimension, or data
    offsets that do not match the shape or leave the file are :class:`CorruptFileError` s."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CorruptFileError(str(path), f"truncated: {size} bytes, too short for a safetensors header")
        (length,) = struct.unpack("<Q", head)
        if length > min(MAX_HEADER_BYTES, size - 8):
            raise CorruptFileError(str(path), f"the header claims {length:,d} bytes but the file has {size - 8:,d} "
                                              "after the length field: truncated or not a safetensors file")
        raw = f.read(length)
    text = decode_utf8(raw, path)
    try:
        header = json.loads(text)
    except (ValueError, RecursionError):
        raise CorruptFileError(str(path), "the safetensors header is not valid JSON") from None
    if not isinstance(header, dict):
        raise CorruptFileError(str(path), "the safetensors header is not a JSON object")
    data_bytes = size - 8 - length
    return {name: _tensor_info(path, name, entry, data_bytes) for name, entry in header.items() if name != "__metadata__"}


def _tensor_info(path: str | os.PathLike, name: str, entry: Any, data_bytes: int) -> TensorInfo:
    def bad(why: str) -> CorruptFileError:
        return CorruptFileError(str(path), f"tensor {name[:200]!r}: {why}")

    if not isinstance(entry, dict):
        raise bad("its header entry is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_BYTES:
        raise bad(f"unknown dtype {str(dtype)[:40]!r}")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise bad(f"shape must be a list of non-negative integers, got {str(shape)[:80]}")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
        raise bad("data_offsets must be two integers")
    begin, end = offsets
    expected = math.prod(shape) * DTYPE_BYTES[dtype]
    if not 0 <= begin <= end <= data_bytes:
        raise bad(f"its bytes {begin}..{end} lie outside the file's {data_bytes:,d} data bytes (truncated?)")
    if end - begin != expected:
        raise bad(f"shape {tuple(shape)} of {dtype} needs {expected:,d} bytes but the header gives it {end - begin:,d}")
    return TensorInfo(dtype, tuple(shape))


# Functions that create a tensor whose size is given by their arguments (or by a tensor's, for *_like).
_FACTORIES = {"empty", "zeros", "ones", "full", "rand", "randn", "randint", "empty_strided", "eye",
              "new_empty", "new_zeros", "new_ones", "new_full", "empty_like", "zeros_like", "ones_like",
              "full_like", "rand_like", "randn_like"}


def _requested_elements(name: str, args: tuple, kwargs: dict) -> int:
    if name.endswith("_like"):
        return args[0].numel() if args and torch.is_tensor(args[0]) else 0
    if name == "eye":  # eye(n) is n x n; eye(n, m) is n x m
        sizes = [a for a in args[:2] if isinstance(a, int) and not isinstance(a, bool)]
        return sizes[0] * (sizes[1] if len(sizes) > 1 else sizes[0]) if sizes else 0
    dims = args[1:] if name.startswith("new_") else args
    size = kwargs.get("size")
    if size is None:
        size = next((a for a in dims if isinstance(a, (tuple, list, torch.Size))), None)
    if size is None:
        size = [a for a in (dims[:1] if name == "full" else dims) if isinstance(a, int) and not isinstance(a, bool)]
        if name == "randint":  # randint(low, high, size): ints before the size are bounds
            size = []
    return math.prod(int(d) for d in size) if all(isinstance(d, int) for d in size) else 0


class _AllocationLimit(TorchFunctionMode):
    def __init__(self, max_elements: int, what: str):
        super().__init__()
        self.left, self.max_elements, self.what = max_elements, max_elements, what

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: Optional[dict] = None) -> Any:
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in _FACTORIES:
            wanted = _requested_elements(name, args, kwargs)
            if wanted > self.left:
                raise CheckpointError(
                    f"{self.what} would create more than {self.max_elements:,d} tensor elements (a tensor of "
                    f"{wanted:,d} was requested with {self.max_elements - self.left:,d} already made); the limit is the "
                    "adapter file's size plus the base model's. Its config claims sizes (e.g. a rank) that neither "
                    "the file nor the model supports; nothing was loaded"
                )
            self.left -= wanted
        return func(*args, **kwargs)


@contextlib.contextmanager
def allocation_limit(max_elements: int, what: str) -> Iterator[None]:
    """Inside, creating tensors of more than ``max_elements`` elements in all raises
    :class:`~peftkit.errors.CheckpointError` (naming ``what``) before the oversized tensor exists.

    Example:
        >>> with allocation_limit(1000, "test"):
        ...     _ = torch.zeros(10, 10)
    """
    with _AllocationLimit(max_elements, what):
        yield
