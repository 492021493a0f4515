from __future__ import annotations

import numpy as np
import torch

from cellformers.train import BatchGroupedSampler


def test_each_minibatch_is_one_group_and_all_positions_once():
    groups = np.array(["a"] * 10 + ["b"] * 7 + ["c"] * 3)
    s = BatchGroupedSampler(groups, batch_size=4, shuffle=True)
    torch.manual_seed(0)
    batches = list(s)
    assert len(batches) == len(s) == 3 + 2 + 1
    for b in batches:
        assert len(set(groups[b])) == 1
        assert len(b) <= 4
    assert sorted(i for b in batches for i in b) == list(range(20))


def test_drop_last_and_order_without_shuffle():
    groups = np.array([0, 0, 0, 1, 1])
    s = BatchGroupedSampler(groups, batch_size=2, shuffle=False, drop_last=True)
    assert list(s) == [[0, 1], [3, 4]]
    torch.manual_seed(1)
    a = list(BatchGroupedSampler(groups, 2))
    torch.manual_seed(1)
    assert a == list(BatchGroupedSampler(groups, 2))
