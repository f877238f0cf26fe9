"""The options of `xent.cross_entropy` and `xent.linear_cross_entropy`, checked once.

Every check runs before any arithmetic, so a bad call fails without work done
and names the argument, the value it got and what was expected.
"""
from typing import NamedTuple, Optional

import numpy as np

from xent._validate import traced_number

REDUCTIONS = ("mean", "sum", "none")
# The softcaps c accepted. ``c·tanh(z/c)`` is computed in float32 for float32
# and half-precision logits: with c or 1/c outside float32's normal numbers
# it multiplies 0 by inf (NaN for every logit, at c = 1e39), and XLA flushes
# subnormal z/c to 0 (at c = 2^126, every |z| < 1). Within 2^±100, z/c is
# flushed only where |z| < 2^-26, a change of the loss below 1.5e-8.
SOFTCAP_MIN = 2.0 ** -100
SOFTCAP_MAX = 2.0 ** 100


class Options(NamedTuple):
    """What the loss of one token is (see `xent._large_vocab._rows` for the math).

    ignore_index: a target value that marks a token to skip (loss and gradient 0,
      not counted in the mean).
    label_smoothing: ε in [0, 1]: (1-ε)·nll + ε·mean_j(-log p_j).
    z_loss: λ >= 0: adds λ·lse² per token.
    softcap: c in [`SOFTCAP_MIN`, `SOFTCAP_MAX`] or None: the logits become c·tanh(logits/c) first.
    reduction: "mean" (over the tokens not ignored), "sum" or "none".
    """

    ignore_index: int = -100
    label_smoothing: float = 0.0
    z_loss: float = 0.0
    softcap: Optional[float] = None
    reduction: str = "mean"

    @property
    def plain(self):
        """Whether the loss is the plain nll: no smoothing, z-loss or softcap."""
        return self.label_smoothing == 0 and self.z_loss == 0 and self.softcap is None


def _not_a(kind, name, value):
    """The TypeError for an option `name` that is not `kind` ("an integer", "a real
    number"); a traced one is told to be static, as the kernels take it as a constant."""
    if traced_number(value):
        return TypeError(f"{name} must be a concrete number: xent's kernels take it as a "
                         f"constant; received the traced {value!r} (under jax.jit or another "
                         f"transformation, pass a Python number, or make it a static argument: "
                         f"a jnp scalar made inside a jitted function is traced too)")
    return TypeError(f"{name} must be {kind}; received {value!r}")


def _integer(name, value):
    """`value` as a Python int (any integer type: int, np.int64, a 0-d integer
    array), or a TypeError naming `name` (bools, floats and arrays of several
    elements are not integers)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)   # (torch.compile's symbolic ints too, which have no hasattr)
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(f"{name} must be an integer; received {value!r}")
    try:
        return int(value.__index__())
    except TypeError:
        raise _not_a("an integer", name, value) from None


def _real(name, value):
    """`value` as a finite Python float, or a TypeError (not a number: a string
    is not, though `float` would read it) or ValueError naming `name`."""
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be a real number; received {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise _not_a("a real number", name, value) from None
    if not number - number == 0:   # (inf, nan; math.isfinite stops torch.compile(dynamic=True))
        raise ValueError(f"{name} must be finite; received {value!r}")
    return number


def bool_option(name, value):
    """`value` as a Python bool, or a TypeError naming `name`: ``"yes"``, 2 or None
    are not taken as true or false by their truthiness."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"{name} must be True or False; received {value!r}")


def options(ignore_index, label_smoothing, z_loss, softcap, reduction):
    """Check the options and return them as `Options`.

    Raises:
      TypeError: a non-integer `ignore_index`, a non-number option (a string too), a
        bool `softcap`, a traced option (JAX: it must be static).
      ValueError: an `ignore_index` outside int64, `label_smoothing` outside
        [0, 1], a negative `z_loss`, a `softcap` outside [`SOFTCAP_MIN`,
        `SOFTCAP_MAX`], an unknown `reduction`.
    """
    ignore_index = _integer("ignore_index", ignore_index)
    if not -2 ** 63 <= ignore_index < 2 ** 63:   # (torch's is an int64; targets are at most)
        raise ValueError(f"ignore_index must fit in int64, as torch's does; received {ignore_index!r}")
    smoothing = _real("label_smoothing", label_smoothing)
    if not 0.0 <= smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1]; received {label_smoothing!r}")
    z = _real("z_loss", z_loss)
    if z < 0:
        raise ValueError(f"z_loss must be >= 0; received {z_loss!r}")
    if isinstance(softcap, (bool, np.bool_)):   # (True would be a cap of 1.0, silently)
        raise TypeError(f"softcap must be a number (the cap c) or None; received {softcap!r}")
    cap = None if softcap is None else _real("softcap", softcap)
    if cap is not None and cap <= 0:
        raise ValueError(f"softcap must be > 0 or None; received {softcap!r}")
    if cap is not None and not SOFTCAP_MIN <= cap <= SOFTCAP_MAX:
        raise ValueError(
            f"softcap must be from {SOFTCAP_MIN!r} to {SOFTCAP_MAX!r} (float32 and "
            f"half-precision logits are capped in float32, where c·tanh(z/c) needs c, 1/c "
            f"and z/c to be normal numbers); received {softcap!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}; received {reduction!r}")
    return Options(ignore_index, smoothing, z, cap, reduction)


def chunk_rows(chunk_size, num_classes):
    """The number of tokens per chunk of `linear_cross_entropy`.

    None picks `CHUNK_BYTES` of float32 logits per chunk, and at least
    `CHUNK_MIN_TOKENS` tokens: the three matmuls of a chunk lose efficiency
    fast below that (NumPy's OpenBLAS, N=2048, H=1024, V=128256 float32 on an
    AMD EPYC: 17.6 s at 32 tokens per chunk, 11.4 s at 96, 10.7 s at 128,
    8.5 s unchunked). Else a positive integer is required (any integer type;
    a TypeError for others, a ValueError below 1).
    """
    if chunk_size is None:
        return max(CHUNK_MIN_TOKENS, CHUNK_BYTES // (4 * max(num_classes, 1)))
    rows = _integer("chunk_size", chunk_size)
    if rows < 1:
        raise ValueError(f"chunk_size must be a positive integer or None; received {chunk_size!r}")
    return rows


# One chunk's float32 logits: 24 MiB (96 tokens at V = 65536: under 5% of
# the logits of 2048 tokens), and never fewer than 96 tokens.
CHUNK_BYTES = 24 << 20
CHUNK_MIN_TOKENS = 96
