"""The order samples are trained in (training/schedule.py): a seeded permutation per epoch, and with
`training.group_by_length` batches of about one length, so that a batch padded to its longest wastes little
(the trainer taking its batches from that order: tests/test_training.py)."""

from __future__ import annotations

import random

from omnivox.training.schedule import epoch_order, global_batch


def _lengths(n: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(30, 475) for _ in range(n)]


def _padded(order: list[int], lengths: list[int], size: int) -> int:
    """Positions a run of batches of `size` computes: each batch padded to its longest."""
    return sum(max(lengths[i] for i in order[k:k + size]) * size for k in range(0, len(order) - size + 1, size))


def test_grouped_epoch_is_a_permutation_fixed_by_the_seed():
    lengths = _lengths(1003)
    order = epoch_order(1003, 0, 0, 8, lengths, 50).tolist()
    assert sorted(order) == list(range(1003))  # every sample once per epoch, the last short run included
    assert order == epoch_order(1003, 0, 0, 8, lengths, 50).tolist()
    assert order != epoch_order(1003, 0, 1, 8, lengths, 50).tolist()
    assert order != epoch_order(1003, 1, 0, 8, lengths, 50).tolist()


def test_grouped_batches_pad_far_less_than_random_ones():
    lengths = _lengths(4000)
    plain = epoch_order(4000, 0, 0).tolist()
    grouped = epoch_order(4000, 0, 0, 8, lengths, 50).tolist()
    real = sum(lengths[: len(lengths) // 8 * 8])
    assert _padded(plain, lengths, 8) > 1.5 * real  # random batches of 8: most of a step is padding
    assert _padded(grouped, lengths, 8) < 1.05 * real
    assert len({len(set(lengths[i] > 250 for i in grouped[k:k + 8])) for k in range(0, 3992, 8)}) == 2  # not sorted
    # batches are not in length order: long and short ones alternate through the epoch
    maxima = [max(lengths[i] for i in grouped[k:k + 8]) for k in range(0, 3992, 8)]
    assert maxima != sorted(maxima) and maxima != sorted(maxima, reverse=True)


def test_global_batch_without_an_order_is_the_plain_permutation():
    assert global_batch(100, 3, 40, 8) == epoch_order(100, 3, 0).tolist()[40:48]
    order = lambda epoch: epoch_order(100, 3, epoch, 8, _lengths(100), 4)  # noqa: E731
    assert global_batch(100, 3, 96, 8, order) == order(0).tolist()[96:] + order(1).tolist()[:4]  # across epochs
