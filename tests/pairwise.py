"""Pairwise test grids: every pair of option values together, in few cases.

A bug in the loss functions needs, in practice, one or two options set a
certain way to show (a zero weight and a mean; bfloat16 and label
smoothing). A grid that puts every value of each option next to every value
of every other option at least once finds those with a fraction of the full
cross-product: 4 dtypes x 3 ranks x 10 weight layouts x 5 reductions is 600
cases, and its pairwise grid about 50.
"""
import itertools


def _uncovered_pairs(options):
    """Every ``((i, a), (j, b))`` with ``i < j``: value index a of option i beside b of j."""
    sizes = [len(values) for values in options]
    return {((i, a), (j, b))
            for i, j in itertools.combinations(range(len(sizes)), 2)
            for a in range(sizes[i]) for b in range(sizes[j])}


def _pair(i, a, j, b):
    """The key of value `a` of option `i` beside value `b` of option `j`."""
    return ((i, a), (j, b)) if i < j else ((j, b), (i, a))


def _gain(row, i, a, uncovered):
    """How many uncovered pairs setting option `i` to `a` in `row` would cover."""
    return sum(_pair(i, a, j, b) in uncovered
               for j, b in enumerate(row) if b is not None and j != i)


def _next_row(sizes, uncovered):
    """A row that covers the first uncovered pair, completed greedily (first best value)."""
    (i, a), (j, b) = min(uncovered)
    row = [None] * len(sizes)
    row[i], row[j] = a, b
    for k, size in enumerate(sizes):
        if row[k] is None:
            row[k] = max(range(size), key=lambda v: (_gain(row, k, v, uncovered), -v))
    return row


def _pairs_of(row):
    return {((i, row[i]), (j, row[j])) for i, j in itertools.combinations(range(len(row)), 2)}


def pairwise(*options):
    """Cases (tuples, one value per option) in which every pair of values meets.

    Args:
      *options: sequences of values, one per option (each non-empty).

    Returns:
      A deterministic list of tuples covering every value pair of every two
      options; with one option, its values.
    """
    sizes = [len(values) for values in options]
    if len(options) < 2:
        return [tuple(v) for v in itertools.product(*options)]
    uncovered, rows = _uncovered_pairs(options), []
    while uncovered:
        row = _next_row(sizes, uncovered)
        uncovered -= _pairs_of(row)
        rows.append(tuple(values[k] for values, k in zip(options, row)))
    return rows

