"""xent: TensorFlow's softmax cross-entropy family, without TensorFlow.

The namespaces mirror TensorFlow's, so ported code changes only its import:
`xent.nn`, `xent.losses` (``tf.compat.v1.losses``), `xent.keras.losses`,
`xent.raw_ops` and `xent.errors`. Beyond TensorFlow, `xent.cross_entropy` and
`xent.linear_cross_entropy` serve large-vocabulary training.
"""
from xent import compat
from xent import errors
from xent import keras
from xent import losses
from xent import nn
from xent import raw_ops
from xent._buffers import empty_cache
from xent._core import get_kernels
from xent._large_vocab import cross_entropy
from xent._large_vocab import linear_cross_entropy
from xent._core import set_kernels
from xent._jax_path import get_jax_path
from xent._jax_path import set_jax_path
from xent._threads import get_num_threads
from xent._threads import set_num_threads

__version__ = "0.1.0"

__all__ = [
    "compat", "errors", "keras", "losses", "nn", "raw_ops", "get_kernels", "set_kernels",
    "cross_entropy", "linear_cross_entropy",
    "get_num_threads", "set_num_threads", "empty_cache", "get_jax_path", "set_jax_path",
    "__version__",
]
