"""`tf.keras`' cross-entropy losses (Keras 3 on the TensorFlow backend)."""
from xent.keras import losses

__all__ = ["losses"]
