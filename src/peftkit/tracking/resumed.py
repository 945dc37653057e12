"""What a resumed run does about the steps its trackers already hold.

``peftkit train --resume RUN`` continues from RUN's newest checkpoint, so it logs again every step
after it: ``first_step`` (the checkpoint's step + 1; 0 without a checkpoint, when the run starts
over). The trackers already got those steps from the run that stopped (a crash, a NaN loss, a
second Ctrl-C: anything that ended it after its last checkpoint), and would show each of them twice,
once with the values of a run that did not go on. ``metrics.jsonl`` is cut back by the runner; here:

- TensorBoard: the resumed run's event file starts with a purge mark at ``first_step``
  (``SummaryWriter(purge_step=...)``): TensorBoard hides every event of the earlier files at that
  step or later, so each step shows once, with the values of the run that continued.
- MLflow cannot delete logged metric values. If the run's MLflow run holds a value at
  ``first_step`` or later, it is replaced: a new MLflow run with the same name, start time, tags and
  parameters gets the metric history before ``first_step`` (timestamps kept), the resumed run logs
  into it, and the old one is deleted (MLflow's soft delete: ``mlflow gc`` removes it for good,
  ``mlflow runs restore`` brings it back). Otherwise (a Ctrl-C checkpoints the step it stops after)
  the resumed run continues the same MLflow run.

>>> tensorboard_options("runs/r1/tensorboard", first_step=41)   # doctest: +SKIP
{'purge_step': 41, 'filename_suffix': '.resume001'}
"""

from __future__ import annotations

import glob
import os
from typing import Any, Optional

EVENT_FILES = "events.out.tfevents.*"
REPLACES_TAG = "peftkit.replaces_mlflow_run"


def tensorboard_options(log_dir: str, first_step: Optional[int]) -> dict[str, Any]:
    """``SummaryWriter`` arguments for a run that logs again from ``first_step`` (none for a new run).

    The suffix matters too: tensorboardX names an event file by the second it was opened and the
    host, and truncates a file of that name, so a resume within the same second would wipe the file
    it continues. The suffix keeps both, and sorts after it: TensorBoard reads a folder's event
    files in name order, so the purge mark comes after the events it hides."""
    if first_step is None:
        return {}
    earlier = len(glob.glob(os.path.join(log_dir, EVENT_FILES)))
    return {"purge_step": first_step, "filename_suffix": f".resume{earlier:03d}"}


def mlflow_run_to_continue(client: Any, run_id: str, first_step: Optional[int]) -> str:
    """The MLflow run a run resumed at ``first_step`` logs into: ``run_id`` itself when it holds no
    metric value at ``first_step`` or later, else its replacement (see the module docstring).
    ``client`` is an ``mlflow.tracking.MlflowClient`` of the run's tracking URI."""
    if first_step is None:
        return run_id
    from mlflow.entities import Metric, Param

    old = client.get_run(run_id)
    history = [m for key in old.data.metrics for m in client.get_metric_history(run_id, key)]
    if all(m.step < first_step for m in history):
        return run_id
    new = client.create_run(old.info.experiment_id, start_time=old.info.start_time, run_name=old.info.run_name,
                            tags={**old.data.tags, REPLACES_TAG: run_id})
    kept = [Metric(m.key, m.value, m.timestamp, m.step) for m in history if m.step < first_step]
    params = [Param(key, value) for key, value in old.data.params.items()]
    client.log_batch(new.info.run_id, metrics=kept, params=params)  # the client splits it into allowed sizes
    client.delete_run(run_id)
    return new.info.run_id
