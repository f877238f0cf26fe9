"""The TF faces' signatures against TensorFlow 2.21's and Keras 3's: the same
argument names, order and defaults, but for the README's listed differences
(the `nn` functions take keyword arguments only, as the SPEC says; the raw ops
add a keyword-only `backprop_out`)."""
import inspect

import xent


def _pairs(tf):
    """(xent's callable, TF's, how xent differs: None, "keyword-only" or "backprop_out")."""
    v1, keras = tf.compat.v1.losses, tf.keras.losses
    return [
        (xent.nn.sparse_softmax_cross_entropy_with_logits,
         tf.nn.sparse_softmax_cross_entropy_with_logits, "keyword-only"),
        (xent.nn.softmax_cross_entropy_with_logits, tf.nn.softmax_cross_entropy_with_logits,
         "keyword-only"),
        *((getattr(xent.losses, name), getattr(v1, name), None) for name in (
            "sparse_softmax_cross_entropy", "softmax_cross_entropy", "compute_weighted_loss",
            "get_losses", "get_regularization_losses", "add_loss", "get_total_loss")),
        *((getattr(xent.keras.losses, name), getattr(keras, name), None) for name in (
            "sparse_categorical_crossentropy", "categorical_crossentropy",
            "SparseCategoricalCrossentropy", "CategoricalCrossentropy")),
        (xent.keras.losses.SparseCategoricalCrossentropy.__call__,
         keras.SparseCategoricalCrossentropy.__call__, None),
        (xent.keras.losses.SparseCategoricalCrossentropy.call,
         keras.SparseCategoricalCrossentropy.call, None),
        (xent.raw_ops.SparseSoftmaxCrossEntropyWithLogits,
         tf.raw_ops.SparseSoftmaxCrossEntropyWithLogits, "backprop_out"),
        (xent.raw_ops.SoftmaxCrossEntropyWithLogits, tf.raw_ops.SoftmaxCrossEntropyWithLogits,
         "backprop_out"),
        *((getattr(xent.compat.v1.nn, name), getattr(tf.compat.v1.nn, name), None) for name in (
            "softmax_cross_entropy_with_logits", "softmax_cross_entropy_with_logits_v2",
            "sparse_softmax_cross_entropy_with_logits")),
    ]


def _params(function):
    return [(p.name, p.default, p.kind) for p in inspect.signature(function).parameters.values()]


def test_every_tf_face_has_tfs_arguments_and_defaults(tf):
    """A review found `xent.losses.add_loss` with a `name` TF's has not (xent's
    own plumbing, now `add_named_loss`)."""
    for ours, theirs, differs in _pairs(tf):
        got, want = _params(ours), _params(theirs)
        if differs == "keyword-only":
            want = [(n, d, inspect.Parameter.KEYWORD_ONLY) for n, d, _ in want]
        if differs == "backprop_out":
            want = want + [("backprop_out", None, inspect.Parameter.KEYWORD_ONLY)]
        assert got == want, (ours.__qualname__, got, want)
