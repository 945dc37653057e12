"""The merge functions on plain tensors, against ``peft.utils.merge_utils`` (same seed for DARE's
draws) and against what each should compute by definition."""

from __future__ import annotations

import pytest
import torch
from peft.utils import merge_utils as peft_merge

from peftkit.arithmetic import (
    dare_linear,
    dare_ties,
    magnitude_prune,
    majority_sign_mask,
    prune_by_magnitude,
    prune_randomly,
    task_arithmetic,
    ties,
)
from peftkit.errors import ConfigError


def _tasks(shape=(6, 5), n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(n)]


WEIGHTS = torch.tensor([0.7, -0.4, 1.3])


@pytest.mark.parametrize("name", ["task_arithmetic", "magnitude_prune", "ties", "dare_linear", "dare_ties"])
@pytest.mark.parametrize("density", [0.0, 0.3, 0.75])
@pytest.mark.parametrize("method", ["total", "frequency"])
def test_equal_to_peft_with_the_same_seed(name, density, method):
    ours, theirs = globals()[name], getattr(peft_merge, name)
    kwargs = {} if name == "task_arithmetic" else {"density": density}
    if name in ("ties", "dare_ties"):
        kwargs["majority_sign_method"] = method
    torch.manual_seed(11)
    expected = theirs(_tasks(), WEIGHTS, **kwargs)
    torch.manual_seed(11)
    got = ours(_tasks(), WEIGHTS, **kwargs)
    if name.startswith("dare") and density == 0.0:  # peft divides 0 by 0: NaN everywhere; all dropped is zero
        assert expected.isnan().all() and torch.equal(got, torch.zeros_like(got))
    else:
        assert torch.equal(got, expected)


def test_task_arithmetic_is_the_weighted_sum_and_negation_subtracts():
    a, b = _tasks(n=2)
    assert torch.allclose(task_arithmetic([a, b], [1.0, -1.0]), a - b)
    assert torch.allclose(task_arithmetic([a, b], [0.25, 0.75]), 0.25 * a + 0.75 * b)


def test_magnitude_pruning_keeps_the_largest_entries():
    t = torch.tensor([[0.1, -5.0], [3.0, -0.2]])
    assert torch.equal(prune_by_magnitude(t, 0.5), torch.tensor([[0.0, -5.0], [3.0, 0.0]]))
    assert torch.equal(prune_by_magnitude(t, 1.0), t)
    assert torch.equal(prune_by_magnitude(t, 0.0), torch.zeros_like(t))


def test_random_pruning_rescales_the_kept_entries_and_takes_a_generator():
    t = torch.ones(4000)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    kept = prune_randomly(t, 0.25, generator=g1)
    assert torch.equal(kept, prune_randomly(t, 0.25, generator=g2))
    assert set(kept.unique().tolist()) == {0.0, 4.0}
    assert abs(kept.mean().item() - 1.0) < 0.1  # unbiased: the expectation is kept
    assert set(prune_randomly(t, 0.25, rescale=False, generator=g1).unique().tolist()) == {0.0, 1.0}


def test_ties_elects_a_sign_and_averages_only_the_agreeing_entries():
    a, b, c = torch.tensor([2.0, -1.0, 0.0]), torch.tensor([4.0, 3.0, 0.0]), torch.tensor([-1.0, 1.0, 0.0])
    assert majority_sign_mask(torch.stack([a, b, c])).tolist() == [[True, False, False], [True, True, False],
                                                                    [False, True, False]]
    # entry 0: + wins (2, 4 agree) -> mean 3; entry 1: + wins (3, 1) -> mean 2; entry 2: nothing -> 0
    assert ties([a, b, c], [1.0, 1.0, 1.0], density=1.0).tolist() == [3.0, 2.0, 0.0]


def test_at_full_density_dare_linear_is_task_arithmetic():
    tasks = _tasks()
    assert torch.allclose(dare_linear(tasks, WEIGHTS, 1.0), task_arithmetic(tasks, WEIGHTS))
    assert torch.allclose(dare_ties(tasks, WEIGHTS, 1.0), ties(tasks, WEIGHTS, 1.0))
    assert torch.allclose(magnitude_prune(tasks, WEIGHTS, 1.0), task_arithmetic(tasks, WEIGHTS))


@pytest.mark.parametrize("call, field", [
    (lambda: ties(_tasks(), WEIGHTS, density=1.5), "density"),
    (lambda: dare_linear(_tasks(), WEIGHTS, density=None), "density"),
    (lambda: ties(_tasks(), WEIGHTS, density=0.5, majority_sign_method="mean"), "majority_sign_method"),
    (lambda: task_arithmetic(_tasks(), [1.0, 2.0]), "weights"),
    (lambda: task_arithmetic([torch.ones(2), torch.ones(3)], [1.0, 2.0]), "task_tensors"),
    (lambda: task_arithmetic([], []), "task_tensors"),
])
def test_bad_input_names_the_argument(call, field):
    with pytest.raises(ConfigError, match=field):
        call()
