"""Every error of the nn and raw-op faces, against the error TensorFlow raises.

Label values outside ``[0, C)`` raise `xent.errors.InvalidArgumentError` with
TensorFlow's CPU text; rank and shape mismatches raise `ValueError` with the text
of TF's Python checks; unsupported dtypes raise an error that is both TF's class
(`InvalidArgumentError`) and a `TypeError`. Nothing is computed half-way.
"""
import numpy as np
import pytest

import xent
from oracle import FLOAT_IDS, FLOATS, tf_message
from xent.errors import InvalidArgumentError

SPARSE_NN = xent.nn.sparse_softmax_cross_entropy_with_logits
DENSE_NN = xent.nn.softmax_cross_entropy_with_logits
SPARSE_RAW = xent.raw_ops.SparseSoftmaxCrossEntropyWithLogits


def test_invalid_argument_error_is_a_value_error():
    assert issubclass(InvalidArgumentError, ValueError)
    err = InvalidArgumentError("boom")
    assert str(err) == "boom"


# -- labels outside [0, C) -------------------------------------------------------------

BAD_LABELS = [
    ([0, 5, 1], 3),
    ([4, 3, 0, -1], 4),
    ([9, 5, 0], 3),
    ([-3, 7, 0], 3),
    ([-1, -5, 0], 3),
    ([3, -1, 3, 9, -2], 3),
    ([[0, 1], [1, 7]], 4),
    ([[0, -1], [2, 1]], 3),
    ([[[2]], [[3]]], 3),
    (3, 3),
    ([0, 1, 1], 1),
    ([2 ** 31 - 1, 0], 5),
]


def test_invalid_argument_errors_keep_their_text_under_torch_compile():
    """torch.compile(fullgraph=True) reports an error raised while tracing as its own
    "Observed exception" with the original text; xent's errors lost theirs (their
    own __init__, which dynamo could not trace, replaced it: an independent
    review). `message` is still TF's text, and the error pickles."""
    import pickle
    torch = pytest.importorskip("torch")
    error = InvalidArgumentError("the text")
    assert error.message == "the text" and str(error) == "the text"
    assert pickle.loads(pickle.dumps(error)).message == "the text"
    for tf_style in (InvalidArgumentError("nd", "op", "bad label 5"),   # (TF's three)
                     InvalidArgumentError(node_def="nd", op="op", message="bad label 5")):
        assert tf_style.message == "bad label 5" and str(tf_style) == "bad label 5"
        assert (tf_style.node_def, tf_style.op, tf_style.error_code) == ("nd", "op", 3)
        assert pickle.loads(pickle.dumps(tf_style)).message == "bad label 5"
    assert xent.errors.InvalidDTypeError(message="typed").message == "typed"
    error.message = "another"
    assert str(error) == "another"
    loss = lambda z, y: xent.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=z)  # noqa: E731
    z, y = torch.randn(4, 5), torch.tensor([0.0, 1, 2, 2])
    with pytest.raises(xent.errors.InvalidDTypeError) as eager:
        loss(z, y)
    torch.compiler.reset()
    with pytest.raises(Exception) as compiled:
        torch.compile(loss, fullgraph=True, backend="aot_eager")(z, y)
    assert str(eager.value) in str(compiled.value)


@pytest.mark.parametrize("label_dtype", [np.int32, np.int64], ids=["int32", "int64"])
@pytest.mark.parametrize("labels,classes", BAD_LABELS, ids=[str(i) for i in range(len(BAD_LABELS))])
def test_sparse_out_of_range_label_raises_tf_text(tf, labels, classes, label_dtype):
    labels = np.asarray(labels).astype(label_dtype)
    logits = np.ones(labels.shape + (classes,), np.float32)
    with pytest.raises(tf.errors.InvalidArgumentError) as tf_err:
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    with pytest.raises(InvalidArgumentError) as err:
        SPARSE_NN(labels=labels, logits=logits)
    assert str(err.value) in tf_message(tf_err.value)
    assert str(err.value).startswith("Received a label value of")


def test_sparse_int64_label_beyond_int32_reported_exactly(tf):
    labels = np.array([2 ** 40, 1], np.int64)
    logits = np.ones((2, 2), np.float64)
    with pytest.raises(tf.errors.InvalidArgumentError) as tf_err:
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    with pytest.raises(InvalidArgumentError) as err:
        SPARSE_NN(labels=labels, logits=logits)
    assert "Received a label value of 1099511627776 " in str(err.value)
    assert str(err.value) in tf_message(tf_err.value)


def test_sparse_out_of_range_label_exact_message():
    logits = np.zeros((3, 3), np.float32)
    with pytest.raises(InvalidArgumentError) as err:
        SPARSE_NN(labels=np.array([0, 5, 1]), logits=logits)
    assert ("Received a label value of 5 which is outside the valid range of [0, 3).  "
            "Label values: 0 5 1") in str(err.value)


@pytest.mark.parametrize("dtype", FLOATS, ids=FLOAT_IDS)
def test_sparse_out_of_range_label_raises_for_every_logits_dtype(tf, dtype):
    logits = np.ones((2, 2, 4), dtype)
    labels = np.array([[0, 1], [1, 7]])
    with pytest.raises(tf.errors.InvalidArgumentError) as tf_err:
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    with pytest.raises(InvalidArgumentError) as err:
        SPARSE_NN(labels=labels, logits=logits)
    assert str(err.value) in tf_message(tf_err.value)


def test_sparse_out_of_range_labels_in_a_long_batch_are_counted_and_located(tf):
    """TF lists all 100,000 label values (a 200,000-character message); xent keeps TF's
    first sentence, then how many labels are bad and the first few, with where they are."""
    labels = np.zeros(100_000, np.int64)
    labels[[1500, 70_000, 99_999]] = [3, -2, 7]
    logits = np.ones((100_000, 3), np.float32)
    with pytest.raises(tf.errors.InvalidArgumentError) as tf_err:
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    with pytest.raises(InvalidArgumentError) as err:
        SPARSE_NN(labels=labels, logits=logits)
    tf_first = tf_message(tf_err.value).split("  Label values:")[0]
    assert len(tf_message(tf_err.value)) > 200_000
    assert str(err.value) == (f"{tf_first}  3 of 100000 label values are outside it: "
                              "3 at [1500], -2 at [70000], 7 at [99999]")


def test_sparse_out_of_range_labels_beyond_the_first_five_are_counted_not_listed():
    labels = np.full((8, 5), 9, np.int32)
    with pytest.raises(InvalidArgumentError) as err:
        SPARSE_NN(labels=labels, logits=np.ones((8, 5, 4), np.float32))
    assert str(err.value) == (
        "Received a label value of 9 which is outside the valid range of [0, 4).  40 of 40 "
        "label values are outside it: 9 at [0, 0], 9 at [0, 1], 9 at [0, 2], 9 at [0, 3], "
        "9 at [0, 4], ...")


@pytest.mark.parametrize("size", [32, 33])
def test_sparse_out_of_range_label_lists_tfs_label_values_up_to_32_labels(tf, size):
    labels = np.zeros(size, np.int64)
    labels[-1] = 5
    logits = np.ones((size, 3), np.float32)
    with pytest.raises(tf.errors.InvalidArgumentError) as tf_err:
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    with pytest.raises(InvalidArgumentError) as err:
        SPARSE_NN(labels=labels, logits=logits)
    assert (str(err.value) == tf_message(tf_err.value)) == (size <= 32)
    assert str(err.value).startswith(tf_message(tf_err.value).split("Label values:")[0])


@pytest.mark.parametrize("labels,classes", BAD_LABELS[:6], ids=[str(i) for i in range(6)])
def test_sparse_raw_out_of_range_label_raises_tf_text(tf, labels, classes):
    labels = np.asarray(labels)
    features = np.ones((labels.size, classes), np.float32)
    with pytest.raises(tf.errors.InvalidArgumentError) as tf_err:
        tf.raw_ops.SparseSoftmaxCrossEntropyWithLogits(features=features, labels=labels)
    with pytest.raises(InvalidArgumentError) as err:
        SPARSE_RAW(features=features, labels=labels)
    assert str(err.value) in tf_message(tf_err.value)


def test_invalid_label_leaves_in_place_features_untouched():
    features = np.arange(12, dtype=np.float32).reshape(4, 3)
    before = features.copy()
    with pytest.raises(InvalidArgumentError):
        SPARSE_RAW(features=features, labels=np.array([0, 1, 2, 3]), backprop_out=features)
    np.testing.assert_array_equal(features, before)


def test_invalid_label_leaves_separate_backprop_out_untouched():
    features = np.arange(12, dtype=np.float32).reshape(4, 3)
    buffer = np.full_like(features, 7.0)
    with pytest.raises(InvalidArgumentError):
        SPARSE_RAW(features=features, labels=np.array([0, -1, 2, 1]), backprop_out=buffer)
    np.testing.assert_array_equal(buffer, 7.0)


def test_sparse_labels_in_range_on_empty_batch_raise_nothing():
    got = SPARSE_NN(labels=np.zeros((0,), np.int32), logits=np.zeros((0, 3), np.float32))
    assert got.shape == (0,)


@pytest.mark.parametrize("shape", [(3, 0), (0, 0)], ids=str)
def test_sparse_zero_classes_raise_invalid_argument_like_tf(tf, shape):
    logits = np.zeros(shape, np.float32)
    labels = np.zeros(shape[:1], np.int32)
    with pytest.raises(tf.errors.InvalidArgumentError) as tf_err:
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    with pytest.raises(InvalidArgumentError) as err:
        SPARSE_NN(labels=labels, logits=logits)
    assert tf_message(tf_err.value) in str(err.value)


# -- ranks and shapes (TF's Python-level checks) ----------------------------------------

SPARSE_SHAPE_ERRORS = [
    ([[0, 2]], [[0.0, 1.0], [2.0, 3.0], [2.0, 3.0]]),
    ([0, 2], [[0.0, 1.0], [2.0, 3.0], [2.0, 3.0]]),
    ([0], [1.0]),
    (0, [[7.0]]),
    ([[0, 1]], [[[1.0, 2.0], [3.0, 4.0]], [[1.0, 2.0], [3.0, 4.0]]]),
    (np.zeros((2, 3), np.int32), np.zeros((2, 4, 5), np.float32)),
]


@pytest.mark.parametrize("labels,logits", SPARSE_SHAPE_ERRORS,
                         ids=[str(i) for i in range(len(SPARSE_SHAPE_ERRORS))])
def test_sparse_rank_and_shape_mismatch_raise_value_error_with_tf_text(tf, labels, logits):
    with pytest.raises(ValueError) as tf_err:
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    with pytest.raises(ValueError) as err:
        SPARSE_NN(labels=labels, logits=logits)
    assert str(tf_err.value) in str(err.value)


def test_sparse_scalar_logits_raise_value_error_with_tf_text_without_its_stray_backtick(tf):
    with pytest.raises(ValueError) as tf_err:
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=0, logits=1.0)
    with pytest.raises(ValueError) as err:
        SPARSE_NN(labels=0, logits=1.0)
    assert str(tf_err.value).endswith("`")   # TF's text: "... Received logits=<tf.Tensor ...>`"
    assert str(err.value) == "`logits` cannot be a scalar. Received logits=1.0"
    assert str(err.value).split("Received")[0] == str(tf_err.value).split("Received")[0]


DENSE_SHAPE_ERRORS = [
    ((2, 3), (2, 2)), ((2, 1, 3), (2, 3, 3)), ((3, 3), (2, 3, 3)), ((2, 3), (3, 2)),
    ((18,), (2, 3, 3)), ((4, 3), (2, 3, 3)),
    # the raw op broadcasts the one logits row, the nn op's reshape to the logits' rows fails
    ((4, 3), (1, 3)), ((2, 3, 3), (3,)), ((0, 3), (1, 3)),
]


@pytest.mark.parametrize("labels_shape,logits_shape", DENSE_SHAPE_ERRORS,
                         ids=[f"l{a}-g{b}" for a, b in DENSE_SHAPE_ERRORS])
def test_dense_unbroadcastable_labels_raise_value_error_with_tf_text(tf, labels_shape,
                                                                     logits_shape):
    labels = np.ones(labels_shape, np.float32)
    logits = np.zeros(logits_shape, np.float32)
    with pytest.raises(tf.errors.InvalidArgumentError) as tf_err:
        tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    with pytest.raises(ValueError) as err:
        DENSE_NN(labels=labels, logits=logits)
    assert tf_message(tf_err.value) in str(err.value)


def test_dense_scalar_labels_raise_invalid_argument_like_tf(tf):
    logits = np.zeros((2, 3), np.float32)
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf.nn.softmax_cross_entropy_with_logits(labels=np.float32(0.5), logits=logits)
    with pytest.raises(xent.errors.InvalidArgumentError, match="labels.shape=()"):
        DENSE_NN(labels=np.float32(0.5), logits=logits)


def test_dense_logits_row_broadcast_to_more_labels_is_refused_on_torch_too():
    torch = pytest.importorskip("torch")
    labels, logits = torch.full((4, 3), 0.25), torch.zeros((1, 3), requires_grad=True)
    with pytest.raises(xent.errors.InvalidArgumentError, match="tensor with 4 values"):
        DENSE_NN(labels=labels, logits=logits)


@pytest.mark.parametrize("axis", [2, 3, -4, 10], ids=str)
def test_dense_axis_out_of_range_raises_value_error(tf, axis):
    logits = np.zeros((2, 3, 4)[: 2 if axis == 2 else 3], np.float32)
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError)):
        tf.nn.softmax_cross_entropy_with_logits(labels=logits, logits=logits, axis=axis)
    with pytest.raises(ValueError):
        DENSE_NN(labels=logits, logits=logits, axis=axis)


def test_dense_axis_with_mismatched_label_rank_raises_value_error():
    logits = np.zeros((2, 3, 4), np.float32)
    with pytest.raises(ValueError):
        DENSE_NN(labels=np.zeros((3, 4), np.float32), logits=logits, axis=0)


# -- dtypes --------------------------------------------------------------------------

BAD_LOGITS = [np.array([[1, 2]], np.int32), np.array([[1, 2]], np.int64),
              np.array([[True, False]]), np.array([[1, 2]], np.complex64),
              np.array([["a", "b"]])]
BAD_SPARSE_LABELS = [np.array([0.0]), np.array([0.0], np.float32), np.array([0], np.int8),
                     np.array([0], np.uint8), np.array([0], np.int16), np.array([0], np.uint64),
                     np.array([False])]


def dtype_id(arr):
    return arr.dtype.name


@pytest.mark.parametrize("logits", BAD_LOGITS, ids=dtype_id)
def test_sparse_non_float_logits_are_invalid_argument_and_type_error(tf, logits):
    labels = np.array([0], np.int32)
    if logits.dtype.kind != "U":
        with pytest.raises(tf.errors.InvalidArgumentError):
            tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    with pytest.raises(InvalidArgumentError) as err:
        SPARSE_NN(labels=labels, logits=logits)
    assert isinstance(err.value, TypeError)
    assert "logits" in str(err.value)


@pytest.mark.parametrize("logits", BAD_LOGITS, ids=dtype_id)
def test_dense_non_float_logits_are_invalid_argument_and_type_error(tf, logits):
    labels = np.array([[1.0, 0.0]], np.float32)
    if logits.dtype.kind != "U":
        with pytest.raises(tf.errors.InvalidArgumentError):
            tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    with pytest.raises(InvalidArgumentError) as err:
        DENSE_NN(labels=labels, logits=logits)
    assert isinstance(err.value, TypeError)
    assert "logits" in str(err.value)


@pytest.mark.parametrize("labels", BAD_SPARSE_LABELS, ids=dtype_id)
def test_sparse_non_int32_int64_labels_are_invalid_argument_and_type_error(tf, labels):
    logits = np.array([[1.0, 2.0]], np.float32)
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    with pytest.raises(InvalidArgumentError) as err:
        SPARSE_NN(labels=labels, logits=logits)
    assert isinstance(err.value, TypeError)
    assert labels.dtype.name in str(err.value)


def test_sparse_python_float_labels_are_rejected(tf):
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=[0.0], logits=[[1.0, 2.0]])
    with pytest.raises(TypeError):
        SPARSE_NN(labels=[0.0], logits=[[1.0, 2.0]])


def test_dense_python_int_logits_are_rejected_like_tf(tf):
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf.nn.softmax_cross_entropy_with_logits(labels=[0.0, 1.0], logits=[3, 1])
    with pytest.raises(InvalidArgumentError) as err:
        DENSE_NN(labels=[0.0, 1.0], logits=[3, 1])
    assert isinstance(err.value, TypeError)


# -- missing arguments -----------------------------------------------------------------


@pytest.mark.parametrize("fn", [SPARSE_NN, DENSE_NN], ids=["sparse", "dense"])
def test_labels_none_raises_value_error(tf, fn):
    tf_fn = getattr(tf.nn, fn.__name__)
    with pytest.raises(ValueError):
        tf_fn(labels=None, logits=[[1.0, 2.0]])
    with pytest.raises(ValueError):
        fn(labels=None, logits=[[1.0, 2.0]])


@pytest.mark.parametrize("fn", [SPARSE_NN, DENSE_NN], ids=["sparse", "dense"])
def test_logits_none_raises_value_error(tf, fn):
    tf_fn = getattr(tf.nn, fn.__name__)
    labels = [0] if fn is SPARSE_NN else [[1.0, 0.0]]
    with pytest.raises(ValueError):
        tf_fn(labels=labels, logits=None)
    with pytest.raises(ValueError):
        fn(labels=labels, logits=None)


def test_none_message_is_tfs_with_the_missing_space(tf):
    with pytest.raises(ValueError) as tf_err:
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=None, logits=[[1.0]])
    with pytest.raises(ValueError) as err:
        SPARSE_NN(labels=None, logits=[[1.0]])
    head, tail = str(tf_err.value).split("Received")
    assert head.endswith("with_logits")   # TF's text runs on: "...with_logitsReceived: ..."
    assert str(err.value) == f"{head}. Received{tail}"


def test_dense_none_message_names_the_function_like_the_sparse_one():
    # (TF's dense op fails converting None to a tensor before its own check.)
    with pytest.raises(ValueError) as err:
        DENSE_NN(labels=None, logits=[[1.0]])
    assert str(err.value) == ("Both `labels` and `logits` must be provided for "
                              "softmax_cross_entropy_with_logits. Received: labels=None and "
                              "logits=[[1.0]]")


@pytest.mark.parametrize("fn", [SPARSE_NN, DENSE_NN], ids=["sparse", "dense"])
def test_missing_keyword_argument_raises_type_error(fn):
    with pytest.raises(TypeError):
        fn(logits=np.zeros((2, 3), np.float32))


# -- nothing returned half-computed -----------------------------------------------------


def test_error_after_a_good_call_does_not_poison_the_next_call():
    logits = np.array([[1.0, 2.0, 3.0]], np.float32)
    good = SPARSE_NN(labels=np.array([2]), logits=logits)
    with pytest.raises(InvalidArgumentError):
        SPARSE_NN(labels=np.array([3]), logits=logits)
    again = SPARSE_NN(labels=np.array([2]), logits=logits)
    np.testing.assert_array_equal(good, again)


def test_invalid_label_leaves_logits_and_labels_untouched():
    logits = np.array([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], np.float32)
    labels = np.array([2, 3])
    copies = logits.copy(), labels.copy()
    with pytest.raises(InvalidArgumentError):
        SPARSE_NN(labels=labels, logits=logits)
    np.testing.assert_array_equal(logits, copies[0])
    np.testing.assert_array_equal(labels, copies[1])


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64])
def test_label_range_check_is_exact_for_any_class_count(dtype):
    """Both range checks are exact whatever the class count and label width: the
    compiled one reads a label as a 64-bit unsigned number (a negative one is
    then above every class count), NumPy's takes the min and the max."""
    from xent import _fused, _kernels, _validate

    bits = np.iinfo(dtype).bits
    for classes in (5, 1 << (bits - 1), (1 << (bits - 1)) + 1, 1 << bits, 1 << 62):
        good = np.array([0, min(classes - 1, np.iinfo(dtype).max)], dtype)
        _validate.labels_in_range(good, classes)
        for bad_value in (-1, np.iinfo(dtype).min) + ((classes,) if classes <= np.iinfo(dtype).max else ()):
            bad = np.array([0, bad_value], dtype)
            with pytest.raises(InvalidArgumentError, match=f"label value of {bad_value} "):
                _validate.labels_in_range(bad, classes)
            assert _kernels.labels_fit(bad, classes) is False
            if classes < 1 << 63:   # (the compiled check takes an int64 class count)
                assert _fused.labels_fit(bad, classes) is False
        assert _kernels.labels_fit(good, classes)
        assert classes >= 1 << 63 or _fused.labels_fit(good, classes)


# -- inputs that are not arrays of numbers --------------------------------------------------

_L = np.zeros((2, 3), np.float32)
_Y = np.array([0, 1])
_RAGGED = [[1.0, 2.0], [3.0]]
_NOT_NUMBERS = [
    ("labels", lambda v: DENSE_NN(labels=v, logits=_L)),
    ("labels", lambda v: SPARSE_NN(labels=v, logits=_L)),
    ("logits", lambda v: SPARSE_NN(labels=_Y, logits=v)),
    ("features", lambda v: SPARSE_RAW(features=v, labels=_Y)),
    ("weights", lambda v: xent.losses.sparse_softmax_cross_entropy(_Y, _L, weights=v)),
    ("losses", lambda v: xent.losses.compute_weighted_loss(v)),
    ("onehot_labels", lambda v: xent.losses.softmax_cross_entropy(v, _L)),
    ("y_true", lambda v: xent.keras.losses.SparseCategoricalCrossentropy(from_logits=True)(v, _L)),
    ("sample_weight", lambda v: xent.keras.losses.SparseCategoricalCrossentropy(
        from_logits=True)(_Y, _L, sample_weight=v)),
    ("y_pred", lambda v: xent.keras.losses.categorical_crossentropy(np.eye(3)[:2], v)),
    ("target", lambda v: xent.cross_entropy(_L, v)),
    ("bias", lambda v: xent.linear_cross_entropy(_L, np.zeros((4, 3), np.float32), _Y, bias=v)),
]


@pytest.mark.parametrize("value,shown", [("abc", "'abc' (dtype str96)"),
                                         ({"a": 1}, "{'a': 1} (dtype object)"),
                                         (["a", "b"], "['a', 'b'] (dtype str32)"),
                                         ([0, None], "[0, None] (dtype object)")],
                         ids=["str", "dict", "strings", "mixed"])
@pytest.mark.parametrize("name,call", _NOT_NUMBERS, ids=[n for n, _ in _NOT_NUMBERS])
def test_arguments_that_are_not_numbers_are_named(name, call, value, shown):
    """Strings, dicts and mixed lists on every face get xent's error naming the
    argument and the value (a TypeError and TF's InvalidArgumentError), not
    NumPy's "could not convert string to float" nor torch's or JAX's own."""
    with pytest.raises(xent.errors.InvalidDTypeError) as info:
        call(value)
    assert str(info.value) == f"`{name}` must hold numbers; received {shown}"
    assert isinstance(info.value, TypeError)


@pytest.mark.parametrize("name,call", _NOT_NUMBERS, ids=[n for n, _ in _NOT_NUMBERS])
def test_ragged_lists_are_named_with_tfs_message(tf, name, call):
    """A ragged nested list raises TF's ValueError text, naming the argument
    (NumPy's own was "setting an array element with a sequence")."""
    with pytest.raises(ValueError, match="Can't convert non-rectangular Python sequence") as tf_info:
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=[0, 1], logits=_RAGGED)
    with pytest.raises(ValueError) as info:
        call(_RAGGED)
    assert str(info.value) == (f"{tf_message(tf_info.value)}"[:-1] + f": `{name}` must be "
                               f"rectangular (rows of one length); received {_RAGGED!r}")


@pytest.mark.parametrize("value", ["abc", None])
def test_a_non_number_next_to_a_tensor_is_named_on_torch_and_jax(value):
    """With a torch or JAX array beside it, a non-number is still xent's named error
    (torch's "can't convert np.ndarray of type numpy.str_", JAX's "Error
    interpreting argument" before)."""
    torch = pytest.importorskip("torch")
    jnp = pytest.importorskip("jax.numpy")
    for logits in (torch.from_numpy(_L), jnp.asarray(_L)):
        with pytest.raises(xent.errors.InvalidDTypeError, match="^`target` must hold numbers"):
            xent.cross_entropy(logits, value)
        with pytest.raises(xent.errors.InvalidDTypeError, match="^`labels` must hold numbers"):
            SPARSE_NN(labels=value if value is not None else [None, 0], logits=logits)
