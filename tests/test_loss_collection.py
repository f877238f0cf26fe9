"""The v1 loss collection of `xent.losses`, against TensorFlow in graph mode.

TF2's eager mode never adds to the collection, so each scenario is built twice:
once with `tf.compat.v1.losses` inside a fresh `tf.Graph` (evaluated in a
`tf.compat.v1.Session`), once with `xent.losses`. The scenario returns a dict of
losses and lists of losses; the two runs must agree in list lengths, order,
shapes and values. The autouse fixture in conftest.py empties xent's collection
around every test.
"""
import re

import numpy as np
import pytest

from xent import losses as xl

LOGITS = np.array([[2.0, -1.0, 0.5], [0.1, 0.2, 3.0], [-2.0, 1.5, 1.0], [0.0, 0.0, 0.0]],
                  np.float32)
LABELS = np.array([0, 2, 1, 1])
ONEHOT = np.eye(3, dtype=np.float32)[LABELS]
WEIGHTS = np.array([1.0, 0.0, 2.0, 0.5], np.float32)
RAW = np.array([0.5, 1.5, 2.5], np.float32)


def _run_tf(tf, scenario):
    """Build `scenario` with tf.compat.v1.losses in a fresh graph and evaluate it."""
    with tf.Graph().as_default():
        fetches = scenario(tf.compat.v1.losses)
        with tf.compat.v1.Session() as session:
            return session.run(fetches)


def _run_xent(scenario):
    return scenario(xl)


def _assert_same(actual, expected, path="result"):
    """Same structure, list lengths, shapes and values (float32 tolerance)."""
    if isinstance(expected, dict):
        assert set(actual) == set(expected), path
        for key in expected:
            _assert_same(actual[key], expected[key], f"{path}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert isinstance(actual, list), f"{path}: {type(actual)} is not a list"
        assert len(actual) == len(expected), f"{path}: {len(actual)} != {len(expected)}"
        for i, (a, e) in enumerate(zip(actual, expected)):
            _assert_same(a, e, f"{path}[{i}]")
    else:
        actual, expected = np.asarray(actual), np.asarray(expected)
        assert actual.shape == expected.shape, path
        np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-6, err_msg=path)


def _compare(tf, scenario):
    expected = _run_tf(tf, scenario)
    actual = _run_xent(scenario)
    _assert_same(actual, expected)
    return actual


def _sparse(losses, **kwargs):
    return losses.sparse_softmax_cross_entropy(LABELS, LOGITS, WEIGHTS, **kwargs)


def _dense(losses, **kwargs):
    return losses.softmax_cross_entropy(ONEHOT, LOGITS, WEIGHTS, label_smoothing=0.1, **kwargs)


def _weighted(losses, **kwargs):
    return losses.compute_weighted_loss(RAW, np.array([1.0, 2.0, 0.0]), **kwargs)


FUNCTIONS = {"sparse": _sparse, "dense": _dense, "weighted": _weighted}


def test_graph_keys_losses_equals_tf(tf):
    assert xl.GraphKeys.LOSSES == tf.compat.v1.GraphKeys.LOSSES == "losses"


@pytest.mark.parametrize("reduction", ["none", "weighted_sum", "weighted_mean",
                                       "weighted_sum_over_batch_size",
                                       "weighted_sum_by_nonzero_weights"])
@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_each_loss_adds_its_result_once(tf, function, reduction):
    def scenario(losses):
        loss = FUNCTIONS[function](losses, reduction=reduction)
        return {"returned": loss, "collected": losses.get_losses()}

    result = _compare(tf, scenario)
    assert len(result["collected"]) == 1
    np.testing.assert_array_equal(np.asarray(result["collected"][0]),
                                  np.asarray(result["returned"]))


def test_losses_are_collected_in_call_order(tf):
    def scenario(losses):
        returned = [_dense(losses), _weighted(losses), _sparse(losses),
                    _sparse(losses, reduction="weighted_sum")]
        return {"returned": returned, "collected": losses.get_losses()}

    result = _compare(tf, scenario)
    for collected, returned in zip(result["collected"], result["returned"]):
        np.testing.assert_array_equal(np.asarray(collected), np.asarray(returned))


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_loss_collection_none_adds_nothing(tf, function):
    def scenario(losses):
        loss = FUNCTIONS[function](losses, loss_collection=None)
        return {"returned": loss, "collected": losses.get_losses()}

    result = _compare(tf, scenario)
    assert result["collected"] == []


def test_a_loop_of_uncollected_losses_keeps_no_memory():
    """``loss_collection=None`` (the README's advice for loops) still took two names
    a call in the process-wide table of names in use: 260 bytes a call, for good
    (an independent review; TF's eager losses keep nothing). Two thousand calls
    now take none, and a collected loss after them has its scope's own name
    (TF's graph, where every op takes a name, would call it ``..._loss_2001``)."""
    import tracemalloc

    from xent import _collection

    xl.clear_losses()
    logits = np.random.default_rng(15).standard_normal((8, 10)).astype(np.float32)
    labels = np.arange(8) % 10
    xl.sparse_softmax_cross_entropy(labels, logits, loss_collection=None)
    tracemalloc.start()
    for _ in range(2000):
        xl.sparse_softmax_cross_entropy(labels, logits, loss_collection=None)
    grown = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert _collection._names_in_use == {} and grown < 20_000, grown
    xl.sparse_softmax_cross_entropy(labels, logits)
    assert xl.get_losses(scope="sparse_softmax_cross_entropy_loss/value")
    xl.clear_losses()


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_custom_collection_is_separate_from_default(tf, function):
    def scenario(losses):
        FUNCTIONS[function](losses, loss_collection="my_losses")
        _weighted(losses)
        return {"default": losses.get_losses(),
                "custom": losses.get_losses(loss_collection="my_losses")}

    result = _compare(tf, scenario)
    assert len(result["custom"]) == 1 and len(result["default"]) == 1


def test_add_loss_appends_and_none_collection_skips(tf):
    def scenario(losses):
        if losses is xl:
            extra, skipped = np.float32(2.0), np.float32(3.0)
        else:
            extra, skipped = tf.constant(2.0), tf.constant(3.0)
        _sparse(losses)
        losses.add_loss(extra)
        losses.add_loss(skipped, loss_collection=None)
        return {"collected": losses.get_losses(), "total": losses.get_total_loss()}

    result = _compare(tf, scenario)
    assert len(result["collected"]) == 2
    np.testing.assert_allclose(np.asarray(result["collected"][1]), 2.0)


@pytest.mark.parametrize("add_regularization_losses", [True, False])
def test_get_total_loss_sums_the_collection(tf, add_regularization_losses):
    def scenario(losses):
        _sparse(losses)
        _dense(losses)
        _weighted(losses, loss_collection=None)
        _weighted(losses, reduction="weighted_sum")
        return {"total": losses.get_total_loss(
            add_regularization_losses=add_regularization_losses)}

    result = _compare(tf, scenario)
    assert np.asarray(result["total"]).shape == ()


def test_get_total_loss_adds_same_shaped_unreduced_losses_elementwise(tf):
    def scenario(losses):
        _weighted(losses, reduction="none")
        losses.compute_weighted_loss(RAW * 2.0, reduction="none")
        return {"total": losses.get_total_loss()}

    result = _compare(tf, scenario)
    assert np.asarray(result["total"]).shape == (3,)


def test_total_of_one_loss_is_a_value_of_its_own():
    """TF's total is a fresh value each time it runs: `total += 100` on the one
    loss's total changed the caller's loss and every later total."""
    loss = xl.sparse_softmax_cross_entropy(LABELS, LOGITS, reduction="none")
    kept = loss.copy()
    total = xl.get_total_loss()
    np.testing.assert_array_equal(total, kept)
    total += 100.0
    np.testing.assert_array_equal(loss, kept)
    np.testing.assert_array_equal(xl.get_total_loss(), kept)


@pytest.mark.parametrize("added", [
    ([1.0, 2.0], [3.0, 4.0]), ((1.0, 2.0), [3.0, 4.0]), (3.0,), (1.0, np.float32(2.0)),
    (3, 4), (3, 2.5), ([1, 2], np.array([0.5, 0.25], np.float32)), (2**40, 1)],
    ids=["lists", "tuple-list", "one-float", "float-and-float32", "ints", "int-and-float",
         "int-list-and-array", "big-int"])
def test_get_total_loss_converts_python_values_as_tfs_add_n(tf, added):
    """Losses given to `add_loss` as Python numbers or sequences are added as the
    tensors TF makes of them (float32, int32; int64 past int32's range): two
    lists had been concatenated, a tuple and a list raised TypeError, a float
    came back as a Python float (an independent review)."""
    def scenario(losses):
        for loss in added:
            losses.add_loss(loss)
        return losses.get_total_loss()

    try:
        want = _run_tf(tf, scenario)
    except (TypeError, ValueError) as error:
        with pytest.raises(type(error)):
            _run_xent(scenario)
        return
    got = _run_xent(scenario)
    assert np.asarray(got).dtype == np.asarray(want).dtype
    assert np.asarray(got).shape == np.asarray(want).shape
    np.testing.assert_array_equal(got, want)


def test_get_total_loss_of_empty_collection_raises_value_error(tf):
    with tf.Graph().as_default():
        with pytest.raises(ValueError) as want:
            tf.compat.v1.losses.get_total_loss()
    with pytest.raises(ValueError) as got:
        xl.get_total_loss()
    assert str(got.value) == str(want.value)


def test_get_total_loss_of_mixed_dtypes_raises_type_error(tf):
    """add_n adds one dtype: a float32 loss and a float64 one do not add (TF's message)."""
    def scenario(losses):
        _sparse(losses)
        losses.sparse_softmax_cross_entropy(LABELS, LOGITS.astype(np.float64), WEIGHTS)
        return losses.get_total_loss()

    with pytest.raises(TypeError) as want:
        _run_tf(tf, scenario)
    with pytest.raises(TypeError) as got:
        _run_xent(scenario)
    assert str(got.value) == str(want.value)


def test_get_total_loss_of_mixed_shapes_raises_value_error(tf):
    """add_n needs equal shapes: a scalar and an unreduced [3] loss do not add."""
    def scenario(losses):
        _sparse(losses)
        _weighted(losses, reduction="none")
        return losses.get_total_loss()

    with pytest.raises(ValueError):
        _run_tf(tf, scenario)
    with pytest.raises(ValueError):
        _run_xent(scenario)


def test_get_regularization_losses_is_empty(tf):
    def scenario(losses):
        _sparse(losses)
        return {"regularization": losses.get_regularization_losses()}

    result = _compare(tf, scenario)
    assert result["regularization"] == []


def test_scope_filters_losses_and_total(tf):
    def scenario(losses):
        _sparse(losses, scope="alpha")
        _dense(losses, scope="beta")
        _weighted(losses, scope="alpha")
        _weighted(losses, reduction="weighted_sum")
        return {"alpha": losses.get_losses(scope="alpha"),
                "beta": losses.get_losses(scope="beta"),
                "gamma": losses.get_losses(scope="gamma"),
                "all": losses.get_losses(),
                "total_alpha": losses.get_total_loss(scope="alpha"),
                "total_beta": losses.get_total_loss(scope="beta")}

    result = _compare(tf, scenario)
    assert (len(result["alpha"]), len(result["beta"]), len(result["gamma"]),
            len(result["all"])) == (2, 1, 0, 4)


@pytest.mark.parametrize("query", ["enc", "encoder", "en.", "enc.*", "coder"])
def test_scope_is_a_regex_matched_at_the_start_like_tf(tf, query):
    """TF filters with re.match on the loss's name: "enc" also matches "encoder/..."."""
    def scenario(losses):
        _sparse(losses, scope="enc")
        _dense(losses, scope="encoder")
        _weighted(losses, scope="decoder")
        return {"matched": losses.get_losses(scope=query)}

    _compare(tf, scenario)


@pytest.mark.parametrize("query", ["tower_0/", "tower_0", "tower_0_1/", "tower_1/value",
                                   "t/", "t/Mul", "t/Sum", "u/", "u_1/", "Tower_0",
                                   "sparse_softmax_cross_entropy_loss/",
                                   "sparse_softmax_cross_entropy_loss_1/", ".*/value:0",
                                   ".*/Sum"])
def test_scope_matches_tfs_tensor_names(tf, query):
    """TF matches a scope against the loss tensor's name, ``scope/op:0``: a trailing
    slash (the tower idiom's ``name_scope(...) as scope``) matches, a reused
    scope becomes ``scope_1``, a scope ending in ``/`` is reentered, and the
    last op is ``Mul`` unreduced, ``Sum`` summed, ``value`` otherwise. (A loss
    not collected takes no name in xent, where TF's graph takes one:
    `test_a_loop_of_uncollected_losses_keeps_no_memory`.)"""
    def scenario(losses):
        calls = [("sparse", {"scope": "tower_0"}), ("sparse", {"scope": "tower_1"}),
                 ("dense", {"scope": "tower_0"}),
                 ("weighted", {"scope": "t/", "reduction": "none"}),
                 ("weighted", {"scope": "t/", "reduction": "weighted_sum"}),
                 ("sparse", {}), ("sparse", {}),
                 ("sparse", {"scope": "u"}), ("sparse", {"scope": "u"})]
        for k, (kind, kwargs) in enumerate(calls, 1):   # (k: a value of its own)
            if kind == "weighted":
                losses.compute_weighted_loss(RAW * k, **kwargs)
            elif kind == "sparse":
                losses.sparse_softmax_cross_entropy(LABELS, LOGITS, WEIGHTS * k, **kwargs)
            else:
                losses.softmax_cross_entropy(ONEHOT, LOGITS, WEIGHTS * k, **kwargs)
        return {"matched": losses.get_losses(scope=query)}

    _compare(tf, scenario)


@pytest.mark.parametrize("query", ["s/Cast_1", "s_1/Cast_2", "w/Cast_2", "d/Cast_3", "d_1/Cast_4",
                                   "s/", ".*/Cast", "s/value"])
def test_scope_matches_tfs_tensor_names_of_losses_not_in_float32(tf, query):
    """TF computes a v1 loss in float32 and casts it back: a float64 loss's last op
    is that cast, numbered by the casts before it in the scope (weights that
    need one, label smoothing)."""
    def scenario(losses):
        x = LOGITS.astype(np.float64)
        losses.sparse_softmax_cross_entropy(LABELS, x, scope="s")
        losses.sparse_softmax_cross_entropy(LABELS, x * 2, weights=WEIGHTS.astype(np.float64), scope="s")
        losses.compute_weighted_loss(RAW.astype(np.float64) * 2, scope="w")
        losses.softmax_cross_entropy(ONEHOT, x * 3, scope="d", reduction="none")
        losses.softmax_cross_entropy(ONEHOT, x * 4, scope="d", label_smoothing=0.1)
        return {"matched": losses.get_losses(scope=query)}

    _compare(tf, scenario)


@pytest.mark.parametrize("query", ["sparse_softmax_cross_entropy_loss",
                                   "softmax_cross_entropy_loss", "weighted_loss"])
def test_unscoped_losses_carry_tf_default_scope_names(tf, query):
    def scenario(losses):
        _sparse(losses)
        _dense(losses)
        _weighted(losses)
        return {"matched": losses.get_losses(scope=query)}

    result = _compare(tf, scenario)
    assert len(result["matched"]) == 1


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
@pytest.mark.parametrize("query", ["sparse", "softmax", "weighted", "value:0", "value_1:0"])
def test_empty_scope_is_tfs_root_scope(tf, function, query):
    # scope="" enters TF's root name scope: the loss is "value:0", not the
    # default scope's name (scope=None gives that), and a second is "value_1:0".
    # (At the root, other ops of the loss share the names' counts, so the
    # names of unreduced losses, "Mul_<n>", are not TF's: `loss_name`.)
    def scenario(losses):
        FUNCTIONS[function](losses, scope="")
        FUNCTIONS[function](losses, scope="", reduction="weighted_mean")
        return {"matched": losses.get_losses(scope=query)}

    result = _compare(tf, scenario)
    assert len(result["matched"]) == (1 if query.startswith("value") else 0)


def test_get_losses_returns_a_copy(tf):
    def scenario(losses):
        _sparse(losses)
        listed = losses.get_losses()
        listed.append(listed[0])
        listed.clear()
        return {"collected": losses.get_losses()}

    result = _compare(tf, scenario)
    assert len(result["collected"]) == 1


def test_failed_call_adds_nothing(tf):
    def scenario(losses):
        with pytest.raises(ValueError, match="weights can not be broadcast to values"):
            losses.compute_weighted_loss(RAW, np.ones(4))
        with pytest.raises(ValueError):
            losses.softmax_cross_entropy(ONEHOT, LOGITS, np.ones((4, 1)))
        return {"collected": losses.get_losses()}

    result = _compare(tf, scenario)
    assert result["collected"] == []


def test_clear_losses_empties_the_collection():
    _sparse(xl)
    _dense(xl, loss_collection="my_losses")
    assert len(xl.get_losses()) == 1
    xl.clear_losses()
    assert xl.get_losses() == []
    assert xl.get_losses(loss_collection="my_losses") == []


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_bytes_scope_names_the_loss_as_tf(tf, function):
    def scenario(losses):
        FUNCTIONS[function](losses, scope=b"tower_0")
        return {"matched": losses.get_losses(scope="tower_0/")}

    result = _compare(tf, scenario)
    assert len(result["matched"]) == 1


@pytest.mark.parametrize("function", sorted(FUNCTIONS))
def test_scope_that_is_not_a_string_raises_type_error_before_any_work(tf, function, monkeypatch):
    with tf.Graph().as_default(), pytest.raises(TypeError, match="expected string or bytes"):
        FUNCTIONS[function](tf.compat.v1.losses, scope=3)
    _count_kernel_calls(monkeypatch)
    with pytest.raises(TypeError, match="`scope` must be a string .* 3 of type int"):
        FUNCTIONS[function](xl, scope=3)
    assert _KERNEL_CALLS == []
    assert xl.get_losses() == []


_KERNEL_CALLS = []


def _count_kernel_calls(monkeypatch):
    """Record each call of the NumPy backend's kernels in `_KERNEL_CALLS`."""
    from xent import _backend

    _KERNEL_CALLS.clear()
    for kind in ("sparse_xent", "dense_xent"):
        kernel = getattr(_backend.NumpyBackend, kind)
        monkeypatch.setattr(_backend.NumpyBackend, kind, staticmethod(
            lambda *args, _kernel=kernel, _kind=kind: (_KERNEL_CALLS.append(_kind), _kernel(*args))[1]))


@pytest.mark.parametrize("function", ["sparse", "dense"])
def test_weights_that_do_not_broadcast_raise_before_the_kernel_runs(tf, function, monkeypatch):
    """TF checks the weights' shape when it builds the graph, before any loss is
    computed; xent did so after its kernel had computed every loss."""
    def scenario(losses):
        if function == "sparse":
            return losses.sparse_softmax_cross_entropy(LABELS, LOGITS, np.ones(3, np.float32))
        return losses.softmax_cross_entropy(ONEHOT, LOGITS, np.ones((4, 2), np.float32))

    with tf.Graph().as_default(), pytest.raises(ValueError, match="weights can not be broadcast"):
        scenario(tf.compat.v1.losses)
    _count_kernel_calls(monkeypatch)
    scenario_ok = FUNCTIONS[function](xl)   # (the spy lets a good call through)
    assert len(_KERNEL_CALLS) == 1 and np.isfinite(scenario_ok)
    _KERNEL_CALLS.clear()
    with pytest.raises(ValueError, match="weights can not be broadcast"):
        scenario(xl)
    assert _KERNEL_CALLS == []


@pytest.mark.parametrize("scope", ["a b", "/x", "a:b", "_a", "-a", ".a", "a_b-c.d/e>f", "a//b/"])
def test_scope_names_follow_tfs_root_scope_pattern(tf, scope):
    """TF's graph refuses a root scope name outside its pattern, before any work."""
    try:
        with tf.Graph().as_default():
            expected = tf.compat.v1.losses.compute_weighted_loss(RAW, scope=scope).name
    except ValueError as error:
        assert "is not a valid root scope name" in str(error)
        for function in FUNCTIONS.values():
            with pytest.raises(ValueError, match=f"'{re.escape(scope)}' is not a valid root scope"):
                function(xl, scope=scope)
        assert xl.get_losses() == []
        return
    xl.compute_weighted_loss(RAW, scope=scope)
    assert _collected_names() == [expected]


def _collected_names():
    from xent import _collection

    return [name for name, _ in _collection._registry[xl.GraphKeys.LOSSES]]


@pytest.mark.parametrize("function", ["sparse", "dense"])
def test_bad_scope_is_named_before_a_bad_reduction_as_tf(tf, function):
    with tf.Graph().as_default(), pytest.raises(TypeError):
        FUNCTIONS[function](tf.compat.v1.losses, scope=3, reduction="bogus")
    with pytest.raises(TypeError, match="`scope` must be a string"):
        FUNCTIONS[function](xl, scope=3, reduction="bogus")
