"""`xent demo`: TensorFlow's documented examples, computed live by xent."""
import numpy as np

import xent

Y_TRUE = np.array([1, 2])
Y_PRED = np.array([[0.05, 0.95, 0.0], [0.1, 0.8, 0.1]], np.float32)


def _fmt(x):
    """Print arrays and scalars with 4 decimals."""
    return np.array2string(np.asarray(x), precision=4, suppress_small=True)


def _keras_section():
    """tf.keras.losses.SparseCategoricalCrossentropy's docstring example."""
    lines = ["Keras  SparseCategoricalCrossentropy  y_true=[1, 2]  "
             "y_pred=[[0.05, 0.95, 0], [0.1, 0.8, 0.1]]"]
    scce = xent.keras.losses.SparseCategoricalCrossentropy
    lines.append(f"  sum_over_batch_size          {_fmt(scce()(Y_TRUE, Y_PRED))}")
    lines.append(f"  sample_weight=[0.3, 0.7]     {_fmt(scce()(Y_TRUE, Y_PRED, sample_weight=np.array([0.3, 0.7])))}")
    lines.append(f"  reduction='sum'              {_fmt(scce(reduction='sum')(Y_TRUE, Y_PRED))}")
    lines.append(f"  reduction=None               {_fmt(scce(reduction=None)(Y_TRUE, Y_PRED))}")
    lines.append(f"  ignore_class=2               {_fmt(scce(ignore_class=2)(Y_TRUE, Y_PRED))}")
    return lines


def _v1_section():
    """tf.compat.v1.losses.sparse_softmax_cross_entropy under every reduction."""
    logits = np.array([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3], [1.0, 1.0, 4.0]], np.float32)
    labels, weights = np.array([0, 1, 2]), np.array([1.0, 0.0, 2.0], np.float32)
    lines = [f"v1  losses.sparse_softmax_cross_entropy  labels={labels.tolist()}  "
             f"weights={weights.tolist()}"]
    for reduction in xent.losses.Reduction.all()[:5]:
        value = xent.losses.sparse_softmax_cross_entropy(
            labels, logits, weights, reduction=reduction, loss_collection=None)
        lines.append(f"  {reduction:<32} {_fmt(value)}")
    return lines


def _raw_op_section():
    """tf.raw_ops.SparseSoftmaxCrossEntropyWithLogits: loss and backprop."""
    features = np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]], np.float32)
    labels = np.array([2, 0])
    loss, backprop = xent.raw_ops.SparseSoftmaxCrossEntropyWithLogits(features, labels)
    return ["raw_ops.SparseSoftmaxCrossEntropyWithLogits  features=[[1, 2, 3]] * 2  labels=[2, 0]",
            f"  loss      {_fmt(loss)}",
            "  backprop  " + _fmt(backprop).replace("\n", "\n            ")]


def _nn_section():
    """tf.nn ops: sparse and dense labels, and a -inf masked logit."""
    logits = np.array([[4.0, 2.0, 1.0], [0.0, 5.0, -np.inf]], np.float32)
    sparse = xent.nn.sparse_softmax_cross_entropy_with_logits(labels=[0, 1], logits=logits)
    targets = np.array([[1.0, 0.0], [0.2, 0.8]], np.float32)
    dense = xent.nn.softmax_cross_entropy_with_logits(labels=targets, logits=logits[:, :2].copy())
    return ["nn  logits=[[4, 2, 1], [0, 5, -inf]]",
            f"  sparse_softmax_cross_entropy_with_logits(labels=[0, 1])        {_fmt(sparse)}",
            f"  softmax_cross_entropy_with_logits(labels=[[1, 0], [.2, .8]],\n"
            f"    logits=first two columns)                                    {_fmt(dense)}"]


def run():
    """Print every section."""
    for section in (_keras_section, _v1_section, _raw_op_section, _nn_section):
        print("\n".join(section()))
        print()
