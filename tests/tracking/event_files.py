"""Reading TensorBoard event files back in tests: every scalar as written, or what TensorBoard shows.

TensorBoard reads a folder's event files in name order and, at an event carrying a ``SessionLog``
START with step S (what ``SummaryWriter(purge_step=S)`` writes first), drops every scalar it read
before at step S or later. :func:`shown_scalars` uses TensorBoard's own reader when the
``tensorboard`` package is installed, else applies that rule to :func:`written_events`."""

from __future__ import annotations

import importlib.util
import struct
from pathlib import Path
from typing import Iterator

Scalars = dict[str, list[tuple[int, float]]]


def written_events(folder: Path) -> Iterator:
    """Every event of every event file under ``folder``, files in name order (TFRecord framing:
    length, its crc, the record, its crc)."""
    from tensorboardX.proto import event_pb2

    for path in sorted(folder.rglob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            yield event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4


def written_scalars(folder: Path) -> Scalars:
    """Every scalar as written, duplicates and all."""
    found: Scalars = {}
    for event in written_events(folder):
        for value in event.summary.value:
            if value.HasField("simple_value"):
                found.setdefault(value.tag, []).append((event.step, value.simple_value))
    return found


def shown_scalars(folder: Path) -> Scalars:
    """The scalars TensorBoard shows for the run folder ``folder`` (purges applied)."""
    if importlib.util.find_spec("tensorboard") is not None:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        accumulator = EventAccumulator(str(folder))
        accumulator.Reload()
        return {tag: [(s.step, s.value) for s in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}
    from tensorboardX.proto import event_pb2

    found: Scalars = {}
    for event in written_events(folder):
        if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
            found = {tag: [(s, v) for s, v in values if s < event.step] for tag, values in found.items()}
        for value in event.summary.value:
            if value.HasField("simple_value"):
                found.setdefault(value.tag, []).append((event.step, value.simple_value))
    return {tag: values for tag, values in found.items() if values}
