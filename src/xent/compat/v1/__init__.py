"""`tf.compat.v1`'s softmax cross-entropy: `nn` (its v1 ops) and `losses` (`xent.losses`)."""
from xent import losses
from xent.compat.v1 import nn

__all__ = ["losses", "nn"]
