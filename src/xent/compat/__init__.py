"""`tf.compat`'s names, for TensorFlow 1 code: `xent.compat.v1`."""
from xent.compat import v1

__all__ = ["v1"]
