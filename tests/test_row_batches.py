"""``peftkit.row_batches``: one adapter name per batch row, generation's repeated rows, the errors."""

from __future__ import annotations

import pytest
import torch

from peftkit.errors import AdapterError
from peftkit.row_batches import RowAdapters, group_rows, merged_batch_error, rows_for_batch


def test_one_name_per_row_and_groups_keep_row_order():
    assert rows_for_batch(["a", "b", "a"], 3) == ["a", "b", "a"]
    groups = group_rows(["a", "b", "a"], 3, torch.device("cpu"))
    assert {k: v.tolist() for k, v in groups.items()} == {"a": [0, 2], "b": [1]}


def test_generation_repeats_each_prompt_s_name_for_its_copies():
    names = RowAdapters(["a", "b"], expandable=True)
    assert rows_for_batch(names, 6) == ["a", "a", "a", "b", "b", "b"]
    with pytest.raises(AdapterError, match="should be the same as the number of inputs, but got 2 and 5"):
        rows_for_batch(names, 5)


def test_a_plain_list_is_never_reused_across_rows():
    with pytest.raises(AdapterError, match="Length of `adapter_names` should be the same"):
        rows_for_batch(["a", "b"], 4)


def test_merged_adapters_refuse_mixed_batches_with_peft_s_sentence():
    assert str(merged_batch_error()).startswith("Cannot pass `adapter_names` when there are merged adapters")
