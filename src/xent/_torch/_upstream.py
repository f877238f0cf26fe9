"""The upstream gradient a large loss expects, folded into the kernel's pass.

A loss's backward multiplies TensorFlow's backprop by each row's upstream
gradient ``g``. The eager torch path (`xent._torch._eager`) writes the backprop
during the forward, before ``g`` is known, and scaling it afterwards is a
second pass over a logits-sized tensor: at 4096x32000 float32 a ``.mean()``
step took 38 ms against 26 ms for ``.sum()`` (whose ``g`` is all ones and
needs no pass), and the keras and v1 losses, which reduce to a mean, 41-45
ms (AMD Zen 4, 2 threads).

But ``g`` is mostly the same from one training step to the next: ``1/N``
for a mean, the reduction's factors for weighted losses with the same
weights. So each slot keeps the last ``g`` its backward received, and
whether it was the same as the one before (steady). A slot is a loss shape
and dtype, and the loss's place among the forwards of that shape since a
backward of one ran (`_slot`): two losses of one shape with different
reductions in a step (``(a.mean() + 0.1 * b.mean()).backward()``) keep a
``g`` each.

  - steady: the forward folds that ``g`` into its pass as the rows' weights.
    If the backward's ``g`` is the same, there is nothing left to do; if not,
    the kernel runs again over the same buffer with the new ``g`` as the
    weights (1.8-2.7x the scaling pass it replaces: it reads the logits
    again), and the shape is no longer steady;
  - not steady: the forward makes the loss alone, and the backward runs the
    kernel with its ``g`` as the weights (about the cost of the write and
    the scaling pass it replaces); the same ``g`` twice makes it steady.

A slot not seen yet (padding that changes from batch to batch) is
expected to get the kind of ``g`` the last backward in its place on logits
of its dtype got: all ones (a ``.sum()``: nothing folded), ``1/n`` for each
of its n rows (a mean, divided as torch does it, in float32 or in the half
dtype the loss was rounded to: folded), or anything else (not steady).

Losses of one shape whose backwards run one by one between their forwards
(``a.backward()`` before ``b`` is made) share a place, and with different
reductions are never steady.

Either way the gradient is the kernel's with ``g`` as the rows' weights,
each entry rounded once: the same bits whatever ran before (``g`` is
compared bit for bit, signed zeros too). That is, within rounding, ``g``
times TensorFlow's backprop (the product a small loss makes), but for the
sign of some zeros where a weight is 0. A ``g`` with an infinity or a NaN
is never folded: the caller scales the backprop by it, as TensorFlow does
(the weighted kernel would give NaN rows where the product gives
infinities).

Only for logits of at least `MIN_BYTES` (on smaller ones the comparisons
cost more than the pass), and for dense labels only where they want no
gradient themselves (the logits' gradient then comes from the path that
scales the unweighted backprop, `xent._torch._eager._logits_grad`).
"""
import math

import torch

from xent import _buffers, _threads

__all__ = ["MIN_BYTES", "foldable", "expected", "observe", "forget"]

MIN_BYTES = _buffers.MIN_BYTES
# How many loss shapes are remembered (the least recently seen makes way).
MAX_SHAPES = 8

_lock = _threads.fork_safe_lock()
# Marks a thread in `_lock`: a call made then (a signal handler's) leaves the tables alone.
_inside = _threads.ThreadMark()
# slot (loss shape, dtype, place) -> (the last g as float64, C-contiguous, or None
# for all ones; whether it was the same as the g before it)
_seen = {}
# (loss shape, dtype) -> [the place of the next forward, whether a backward ran since
# the place-0 forward]
_places = {}
# (logits dtype, place) -> the kind of the last g a backward of such a loss got:
# "ones", ("mean", d) (1/n each, divided in torch dtype d) or "other"
_kinds = {}


def foldable(logits):
    """Whether a loss on CPU tensor `logits` (large enough) folds its upstream gradient."""
    return logits.numel() * logits.element_size() >= MIN_BYTES


def _put(table, key, value):
    """``table[key] = value`` as its newest entry (`key` popped first), the oldest
    making way while the table holds `MAX_SHAPES` (under `_lock`)."""
    while len(table) >= MAX_SHAPES:
        del table[next(iter(table))]
    table[key] = value


def _slot(g_shape, dtype):
    """The slot of a forward of a loss of this shape and accumulator `dtype`:
    ``(shape, dtype, place)``, the place counting the forwards of such losses
    since a backward of one ran (the first forward after it is 0 again)."""
    key = tuple(g_shape), dtype
    if _inside:
        return key + (None,)   # (a place no table holds: nothing is known, nothing folded)
    with _inside, _lock:
        place = _places.pop(key, None)
        if place is None or place[1]:
            place = [0, False]
        _put(_places, key, [place[0] + 1, False])
    return key + (place[0],)


def expected(g_shape, dtype, logits_dtype):
    """``(write, weights, slot)`` for the forward of a loss of this shape and
    accumulator `dtype` on logits of `logits_dtype`: whether to write the
    backprop now, the rows' weights to fold in (float64 ``g_shape``; None:
    all ones), and the forward's slot (`_slot`), for `observe`."""
    slot = _slot(g_shape, dtype)
    seen = _seen.get(slot)
    if seen is None:
        kind = _kinds.get((logits_dtype, slot[2]), "ones")
        if kind == "other":
            return False, None, slot
        return True, None if kind == "ones" else _mean_gradient(g_shape, kind[1]), slot
    last, steady = seen
    return (True, last, slot) if steady else (False, None, slot)


def _mean_gradient(g_shape, rounding):
    """The upstream gradient of a mean of the n losses of `g_shape`: ``1/n`` each,
    divided in torch dtype `rounding` as torch's backward of a mean (or of a
    sum over n) does there: the accumulator dtype, or the logits' half dtype
    when the loss was rounded to it first (`xent.nn` returns the logits' dtype).
    As kept (`_as_weights`): None when that is 1 (one row)."""
    n = max(1, math.prod(g_shape))
    value = (torch.tensor(1.0, dtype=rounding) / n).item()
    return None if value == 1 else torch.full(tuple(g_shape), value, dtype=torch.float64)


def _as_weights(g):
    """`g` as kept: None where all ones, else a float64, C-contiguous copy (never
    the caller's tensor, which may change before the next backward)."""
    if bool((g == 1).all()):
        return None
    return g.detach().to(torch.float64, copy=True).contiguous()


def _kind(kept, dtype, logits_dtype):
    """The kind of kept gradient `kept` (`_kinds`) of a loss of accumulator `dtype`
    on logits of `logits_dtype`. A mean divided in the logits' dtype is tried
    first: where both divisions give the same (n a power of 2), `xent.nn`'s
    half loss is the likelier (a wrong guess costs one rerun, and is learnt)."""
    if kept is None:
        return "ones"
    for rounding in dict.fromkeys((logits_dtype, dtype)):
        if _same(kept, _mean_gradient(kept.shape, rounding)):
            return "mean", rounding
    return "other"


def _same(a, b):
    """Whether two kept gradients (`_as_weights`) are the same bits (-0.0 is not
    0.0: the kernel's gradient keeps the sign of its weight)."""
    if a is None or b is None:
        return a is b
    return a.shape == b.shape and torch.equal(a.view(torch.int64), b.view(torch.int64))


def _finite(kept):
    """Whether kept gradient `kept` (`_as_weights`) can be folded as the kernel's row
    weights: every entry finite (None, all ones, is)."""
    return kept is None or bool(torch.isfinite(kept).all())


def observe(g, wrote, weights, logits_dtype, slot):
    """Record upstream gradient `g` that a backward of a loss on logits of
    `logits_dtype` received, given whether its forward (in `slot`) `wrote`
    the backprop and with what `weights`. Returns ``(done, kept)``: whether
    that backprop is already the gradient (`g` is what it folded in), and
    `g` as the kernel's row weights (`_as_weights`: None for all ones). A
    `g` that is not `_finite` never becomes steady (it is not to be folded)."""
    kept = _as_weights(g)
    if _inside:   # (from a signal handler: nothing recorded)
        return wrote and _same(kept, weights), kept
    kind = _kind(kept, g.dtype, logits_dtype)
    with _inside, _lock:
        _kinds.pop((logits_dtype, slot[2]), None)
        _put(_kinds, (logits_dtype, slot[2]), kind)   # (bounded as the other tables)
        place = _places.get(slot[:2])
        if place is not None:
            place[1] = True
        if wrote and _same(kept, weights):
            return True, kept
        last, _ = _seen.pop(slot, (None, True))
        _put(_seen, slot, (kept, not wrote and _same(kept, last) and _finite(kept)))
    return False, kept


def forget():
    """Drop every remembered upstream gradient (for the tests)."""
    with _lock:
        _seen.clear()
        _places.clear()
        _kinds.clear()
