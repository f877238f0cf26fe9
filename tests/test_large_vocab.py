"""xent.cross_entropy and xent.linear_cross_entropy against a float64 oracle.

The oracle is PyTorch in float64 on materialised logits: ``F.cross_entropy``
(with its label smoothing) plus ``z_loss·logsumexp²``, after ``c·tanh(z/c)``
for a softcap, and torch autograd for every gradient. Half-precision inputs
are rounded first, so the oracle sees what xent sees; the tolerance is then a
few units of the dtype's rounding.
"""
import warnings

import ml_dtypes
import numpy as np
import pytest

import xent
from xent.errors import InvalidArgumentError

torch = pytest.importorskip("torch")
F = torch.nn.functional

from large_vocab_cases import (DTYPES, OPTIONS, REDUCTIONS, TOL, assert_close,  # noqa: E402
                               linear_oracle, make, make_linear, oracle)


# -- cross_entropy, NumPy -------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("option", OPTIONS)
def test_cross_entropy_matches_the_oracle(option, reduction, dtype):
    logits, target = make((29,), 70, dtype, seed=1)
    opts = OPTIONS[option]
    loss, grad = xent.cross_entropy(logits, target, reduction=reduction, return_grads=True, **opts)
    truth, truth_grad = oracle(logits.astype(np.float64), target, opts, reduction)
    assert np.asarray(loss).dtype == dtype and grad.dtype == dtype and grad.shape == logits.shape
    assert np.shape(loss) == np.shape(truth)
    assert_close(loss, truth, dtype)
    assert_close(grad, truth_grad, dtype)


@pytest.mark.parametrize("z_loss", [0.0, 1e-4])
@pytest.mark.parametrize("eps", [0.9, 0.999, 1.0])
def test_target_gradient_with_smoothing_near_one_keeps_its_bits(eps, z_loss):
    """The target's entry ``p_y - (1 - ε) - ε/V`` is small when ε is near 1:
    added to the kernel's rounded ``p_y - 1``, ε cancelled its bits (6e-2
    relative error at ε = 1, V = 32000; torch's float32 F.cross_entropy has
    1e-3). Each target entry, relative to itself, against float64."""
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((64, 32000)).astype(np.float32)
    target = rng.integers(0, 32000, 64)
    opts = {"label_smoothing": eps, "z_loss": z_loss}
    _, grad = xent.cross_entropy(logits, target, reduction="sum", return_grads=True, **opts)
    _, truth_grad = oracle(logits.astype(np.float64), target, opts, "sum")
    rows = np.arange(64)
    on_target, truth = grad[rows, target].astype(np.float64), truth_grad[rows, target]
    assert np.all(np.abs(on_target - truth) <= 1e-5 * np.abs(truth))
    assert_close(grad, truth_grad, np.float32)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
def test_one_class_and_confident_rows_keep_their_target_gradient(dtype):
    """One class: smoothing's gradient is exactly 0 (torch's too), and the
    z-loss's 2·λ·lse keeps float32's relative precision (it was rounded in
    float32 beside 1 before: 3.4e-5 relative error, torch's float32 8e-8)."""
    logits = np.array([[0.7], [1.3], [-4.0]], dtype)
    target = np.zeros(3, np.int64)
    _, grad = xent.cross_entropy(logits, target, reduction="sum", label_smoothing=0.1,
                                 return_grads=True)
    assert np.all(grad == 0)
    opts = {"z_loss": 1e-4}
    _, grad = xent.cross_entropy(logits, target, reduction="sum", return_grads=True, **opts)
    _, truth = oracle(logits.astype(np.float64), target, opts, "sum")
    np.testing.assert_allclose(grad, truth, rtol=1e-6 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("shape", [(13,), (3, 5), (2, 3, 4)], ids=str)
@pytest.mark.parametrize("ignore", ["none", "scattered", "all"])
def test_cross_entropy_token_dimensions_and_ignored_tokens(shape, ignore):
    logits, target = make(shape, 33, np.float32, seed=2, ignore=ignore)
    for reduction in REDUCTIONS:
        loss, grad = xent.cross_entropy(logits, target, reduction=reduction, return_grads=True,
                                        **OPTIONS["all"])
        truth, truth_grad = oracle(logits, target, OPTIONS["all"], reduction)
        assert np.shape(loss) == np.shape(truth)
        assert_close(loss, truth, np.float32)
        assert_close(grad, truth_grad, np.float32)
    if ignore == "all":
        assert xent.cross_entropy(logits, target) == 0   # TensorFlow's rule (PyTorch: NaN)


def test_cross_entropy_leaves_its_inputs_alone_and_inplace_overwrites_logits():
    logits, target = make((17,), 40, np.float32, seed=3)
    before = logits.copy()
    loss, grad = xent.cross_entropy(logits, target, return_grads=True, label_smoothing=0.1)
    assert np.array_equal(logits, before)
    loss2, grad2 = xent.cross_entropy(logits, target, return_grads=True, label_smoothing=0.1,
                                      inplace_backward=True)
    assert grad2 is logits and loss2 == loss and np.array_equal(grad2, grad)


def test_ignored_tokens_with_nan_logits_add_nothing():
    logits, target = make((8,), 20, np.float32, seed=4)
    logits[target == -100] = np.nan
    loss, grad = xent.cross_entropy(logits, target, return_grads=True, z_loss=0.1)
    assert np.isfinite(loss) and np.isfinite(grad).all()
    assert not grad[target == -100].any()


def test_cross_entropy_of_long_rows_in_several_blocks_matches_the_oracle():
    """Rows past one block of the kernel (8 MiB) and the kernel's threads."""
    logits, target = make((40,), 65536, np.float32, seed=5)
    loss, grad = xent.cross_entropy(logits, target, return_grads=True, **OPTIONS["all"])
    truth, truth_grad = oracle(logits, target, OPTIONS["all"], "mean")
    assert_close(loss, truth, np.float32)
    assert_close(grad, truth_grad, np.float32)


# -- linear_cross_entropy, NumPy ---------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("option,bias", [("plain", True), ("smoothing", False), ("z_loss", True),
                                         ("softcap", False), ("all", True)])
def test_linear_cross_entropy_matches_the_oracle(option, bias, reduction, dtype):
    x, w, b, target = make_linear(23, 12, 45, dtype, seed=6, bias=bias)
    opts = OPTIONS[option]
    loss, grads = xent.linear_cross_entropy(x, w, target, bias=b, reduction=reduction,
                                            chunk_size=5, return_grads=True, **opts)
    up = np.ones(23) if reduction == "none" else None
    truth, dx, dw, db = linear_oracle(*(None if a is None else np.asarray(a, np.float64)
                                        for a in (x, w, b)), target, opts, reduction, up)
    assert np.asarray(loss).dtype == dtype and np.shape(loss) == np.shape(truth)
    assert_close(loss, truth, dtype)
    for name, got, want in (("input", grads["input"], dx), ("weight", grads["weight"], dw)):
        assert got.dtype == dtype and got.shape == want.shape, name
        assert_close(got, want, dtype)
    assert (grads["bias"] is None) == (b is None)
    if b is not None:
        assert_close(grads["bias"], db, dtype)


def _ulps(got, want, dtype, of_max=False):
    """The largest |got - want| in units of `dtype`'s spacing at |want| (or at max |want|)."""
    want, got = np.asarray(want, np.float64), np.asarray(got, np.float64)
    at = (np.full_like(want, np.abs(want).max()) if of_max else np.abs(want)).astype(dtype)
    spacing = np.nextafter(at, np.array(np.inf, dtype)).astype(np.float64) - at.astype(np.float64)
    return float(np.max(np.abs(got - want) / spacing))


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16], ids=["float16", "bfloat16"])
def test_half_precision_linear_cross_entropy_rounds_where_its_docs_say(dtype):
    """NumPy and JAX widen the input and weight to float32 once: each token's loss,
    and the gradients (in ulps of their largest entry), within 1 ulp of the float64
    truth (0.50 measured). torch runs torch's half matmuls, so each chunk's logits
    are rounded to `dtype` first, as in ``F.cross_entropy(x @ W.T, y)``: its losses
    are within 1 ulp of the float64 loss of those rounded logits (0.50; 1.2-1.9
    ulps of the unrounded truth). The shared tolerance (TOL, ~8 ulps of the
    largest entry) could tell none of this apart."""
    rng = np.random.default_rng(3)
    x, w = rng.normal(size=(512, 64)).astype(dtype), (rng.normal(size=(1000, 64)) / 2).astype(dtype)
    target = rng.integers(0, 1000, 512)
    truth, dx, dw, _ = linear_oracle(x.astype(np.float64), w.astype(np.float64), None, target,
                                     {}, "sum")
    per_token = linear_oracle(x.astype(np.float64), w.astype(np.float64), None, target, {}, "none")[0]
    loss, grads = xent.linear_cross_entropy(x, w, target, reduction="sum", return_grads=True)
    assert _ulps(xent.linear_cross_entropy(x, w, target, reduction="none"), per_token, dtype) <= 1
    assert _ulps(loss, truth, dtype) <= 1
    assert _ulps(grads["input"], dx, dtype, of_max=True) <= 1
    assert _ulps(grads["weight"], dw, dtype, of_max=True) <= 1
    jnp = pytest.importorskip("jax.numpy")
    got = xent.linear_cross_entropy(jnp.asarray(x), jnp.asarray(w), jnp.asarray(target), reduction="none")
    assert _ulps(got, per_token, dtype) <= 1
    tdtype = getattr(torch, np.dtype(dtype).name)
    xt, wt = (torch.tensor(a.astype(np.float32)).to(tdtype) for a in (x, w))
    got = xent.linear_cross_entropy(xt, wt, torch.tensor(target), reduction="none")
    rounded = (xt @ wt.T).double()   # (torch's half matmul: the chunks' logits)
    want = F.cross_entropy(rounded, torch.tensor(target), reduction="none")
    assert _ulps(got.float(), want, dtype) <= 1


def test_byte_swapped_logits_and_a_packed_record_field_of_inputs_give_the_oracles_numbers():
    """Big-endian logits (from a file, say) are read in the machine's order, and an
    in-place gradient over them is refused (it would land in a copy); inputs in a
    field of packed records (rows 17 bytes apart, not a whole number of float32s)
    do not reach BLAS as rows (its leading dimension counts elements: the
    weight's gradient came out ~1e34 off)."""
    logits, target = make((6,), 9, np.float32, seed=21)
    swapped = logits.astype(logits.dtype.newbyteorder("S"))
    loss, grad = xent.cross_entropy(swapped, target, return_grads=True)
    truth, dz = oracle(logits, target, {}, "mean")
    assert loss.dtype == grad.dtype == np.float32
    assert_close(loss, truth, np.float32)
    assert_close(grad, dz, np.float32)
    with pytest.raises(ValueError, match=f"inplace_backward=True .* byte order; received "
                                         f"dtype {swapped.dtype.str}"):
        xent.cross_entropy(swapped, target, inplace_backward=True, return_grads=True)
    x, w, b, target = make_linear(6, 4, 5, np.float32, seed=22)
    target[:] = [0, 1, 2, 3, 4, 0]   # (none ignored: ignored tokens' rows are gathered first)
    records = np.zeros(6, dtype=[("x", "f4", (4,)), ("flag", "u1")])
    records["x"] = x
    assert records["x"].strides == (17, 4)
    loss, grads = xent.linear_cross_entropy(records["x"], w, target, bias=b, return_grads=True)
    truth, dx, dw, db = linear_oracle(*(np.asarray(a, np.float64) for a in (x, w, b)), target,
                                      {}, "mean")
    assert_close(loss, truth, np.float32)
    for got, want in ((grads["input"], dx), (grads["weight"], dw), (grads["bias"], db)):
        assert_close(got, want, np.float32)


def test_inplace_backward_writes_over_memory_mapped_logits(tmp_path):
    """A memmap is an ndarray subclass: converting it makes a new array object over
    the same memory, and the gradient lands in the file (the check of byte order
    that refuses copies must not refuse it)."""
    logits, target = make((5,), 7, np.float32, seed=23)
    mapped = np.lib.format.open_memmap(tmp_path / "z.npy", mode="w+", dtype=np.float32,
                                       shape=logits.shape)
    mapped[:] = logits
    _, want = xent.cross_entropy(logits, target, return_grads=True)
    _, grad = xent.cross_entropy(mapped, target, inplace_backward=True, return_grads=True)
    assert np.shares_memory(grad, mapped)
    mapped.flush()
    np.testing.assert_array_equal(np.load(tmp_path / "z.npy"), want)


@pytest.mark.parametrize("chunk_size", [1, 4, 7, 23, 100, None])
def test_linear_chunk_sizes_agree(chunk_size):
    """N not a multiple of the chunk, one chunk, one token per chunk, the default."""
    x, w, b, target = make_linear(23, 8, 30, np.float64, seed=7)
    loss, grads = xent.linear_cross_entropy(x, w, target, bias=b, chunk_size=chunk_size,
                                            return_grads=True, **OPTIONS["all"])
    truth, dx, dw, db = linear_oracle(x, w, b, target, OPTIONS["all"], "mean")
    assert_close(loss, truth, np.float64)
    assert_close(grads["input"], dx, np.float64)
    assert_close(grads["weight"], dw, np.float64)
    assert_close(grads["bias"], db, np.float64)


def test_linear_with_every_token_ignored_is_zero_with_zero_gradients():
    x, w, b, target = make_linear(6, 4, 9, np.float32, seed=8)
    target[:] = -100
    loss, grads = xent.linear_cross_entropy(x, w, target, bias=b, return_grads=True)
    assert loss == 0 and not any(g.any() for g in grads.values())


def test_gradient_accumulation_with_sum_and_a_global_count_equals_one_big_batch():
    """Four micro-batches, reduction='sum' divided by the global token count."""
    x, w, b, target = make_linear(40, 8, 30, np.float64, seed=9)
    big, big_grads = xent.linear_cross_entropy(x, w, target, bias=b, return_grads=True,
                                               label_smoothing=0.1)
    count = np.count_nonzero(target != -100)
    total, acc = 0.0, {k: 0.0 for k in ("weight", "bias")}
    for part in np.array_split(np.arange(40), 4):
        loss, grads = xent.linear_cross_entropy(x[part], w, target[part], bias=b, reduction="sum",
                                                return_grads=True, label_smoothing=0.1)
        total += loss / count
        acc = {k: acc[k] + grads[k] / count for k in acc}
    assert np.isclose(total, big, rtol=1e-13)
    for k in acc:
        np.testing.assert_allclose(acc[k], big_grads[k], rtol=1e-12, atol=1e-15)


# -- errors ---------------------------------------------------------------------------------------

LOGITS = np.zeros((2, 5), np.float32)
TARGET = np.array([0, 1])


@pytest.mark.parametrize("kwargs,error,text", [
    ({"label_smoothing": 1.5}, ValueError, "label_smoothing must be in [0, 1]; received 1.5"),
    ({"label_smoothing": -0.1}, ValueError, "label_smoothing must be in [0, 1]; received -0.1"),
    ({"z_loss": -1}, ValueError, "z_loss must be >= 0; received -1"),
    ({"softcap": 0}, ValueError, "softcap must be > 0 or None; received 0"),
    ({"softcap": -3.0}, ValueError, "softcap must be > 0 or None; received -3.0"),
    ({"reduction": "avg"}, ValueError, "reduction must be one of ('mean', 'sum', 'none'); received 'avg'"),
    ({"ignore_index": 1.5}, TypeError, "ignore_index must be an integer; received 1.5"),
    ({"ignore_index": 2 ** 63}, ValueError,
     "ignore_index must fit in int64, as torch's does; received 9223372036854775808"),
    ({"ignore_index": -2 ** 70}, ValueError,
     "ignore_index must fit in int64, as torch's does; received -1180591620717411303424"),
    ({"z_loss": "big"}, TypeError, "z_loss must be a real number; received 'big'"),
    ({"label_smoothing": "0.1"}, TypeError, "label_smoothing must be a real number; received '0.1'"),
    ({"softcap": "30"}, TypeError, "softcap must be a real number; received '30'"),
    # (NumPy's own "only integer scalar arrays can be converted to a scalar index" before)
    ({"ignore_index": np.array([1, 2])}, TypeError, "ignore_index must be an integer; received array([1, 2])"),
    ({"ignore_index": np.array(1.5)}, TypeError, "ignore_index must be an integer; received array(1.5)"),
    ({"softcap": True}, TypeError, "softcap must be a number (the cap c) or None; received True"),
    ({"return_grads": "yes"}, TypeError, "return_grads must be True or False; received 'yes'"),
    ({"return_grads": None}, TypeError, "return_grads must be True or False; received None"),
    ({"softcap": 1e39}, ValueError, "softcap must be from 7.888609052210118e-31 to "
     "1.2676506002282294e+30 (float32 and half-precision logits are capped in float32, "
     "where c·tanh(z/c) needs c, 1/c and z/c to be normal numbers); received 1e+39"),
    ({"softcap": 1e-40}, ValueError, "softcap must be from 7.888609052210118e-31 to "
     "1.2676506002282294e+30 (float32 and half-precision logits are capped in float32, "
     "where c·tanh(z/c) needs c, 1/c and z/c to be normal numbers); received 1e-40"),
])
def test_bad_options_are_named(kwargs, error, text):
    for call in (lambda: xent.cross_entropy(LOGITS, TARGET, **kwargs),
                 lambda: xent.linear_cross_entropy(LOGITS, np.zeros((3, 5), np.float32), TARGET, **kwargs)):
        with pytest.raises(error) as info:
            call()
        assert str(info.value) == text


@pytest.mark.parametrize("value", [2, "yes", None])
def test_inplace_backward_is_true_or_false_not_any_truthy_value(value):
    with pytest.raises(TypeError) as info:
        xent.cross_entropy(LOGITS.copy(), TARGET, inplace_backward=value)
    assert str(info.value) == f"inplace_backward must be True or False; received {value!r}"
    assert xent.cross_entropy(LOGITS, TARGET, inplace_backward=np.bool_(False)) == \
        xent.cross_entropy(LOGITS, TARGET)


@pytest.mark.parametrize("name", ["ignore_index", "label_smoothing", "z_loss", "softcap"])
def test_an_option_traced_under_jit_is_told_to_be_static(name):
    """The kernels take the options as constants: a traced one is named, and the
    caller told what to do (JAX's own TracerIntegerConversionError before, or
    "must be a real number" for a value that is one)."""
    jax = pytest.importorskip("jax")
    value = 1 if name == "ignore_index" else 0.1
    told = (f"^{name} must be a concrete number: xent's kernels take it as a constant; "
            f"received the traced .* pass a Python number, or make it a static argument")
    with pytest.raises(TypeError, match=told):
        jax.jit(lambda v: xent.cross_entropy(jax.numpy.asarray(LOGITS), TARGET, **{name: v}))(value)
    if name != "ignore_index":   # (a bfloat16 scalar: ml_dtypes' kind is "V", not "f")
        with pytest.raises(TypeError, match=told):
            jax.jit(lambda x: xent.cross_entropy(x, TARGET, **{name: jax.numpy.bfloat16(value)}))(
                jax.numpy.asarray(LOGITS))
    static = jax.jit(lambda x, v: xent.cross_entropy(x, TARGET, **{name: v}), static_argnums=1)
    assert float(static(LOGITS, value)) == pytest.approx(float(xent.cross_entropy(LOGITS, TARGET, **{name: value})), rel=1e-6)


def test_ignore_index_past_int64_is_refused_as_torch_refuses_it():
    """torch's ignore_index is an int64: F.cross_entropy refuses 2**63, and so does
    xent on torch (it failed inside torch.compile's fake tensors) and NumPy."""
    z, t = torch.zeros(2, 5), torch.tensor([0, 1])
    with pytest.raises((ValueError, RuntimeError, OverflowError)):
        F.cross_entropy(z, t, ignore_index=2 ** 63)
    with pytest.raises(ValueError, match="ignore_index must fit in int64"):
        xent.cross_entropy(z, t, ignore_index=2 ** 63)
    torch.compiler.reset()
    with pytest.raises(RuntimeError, match="ignore_index must fit in int64"):   # (dynamo's wrapper)
        torch.compile(lambda z: xent.cross_entropy(z, t, ignore_index=2 ** 63), fullgraph=True)(z)
    assert float(xent.cross_entropy(z, t, ignore_index=2 ** 63 - 1)) == pytest.approx(np.log(5.0))


@pytest.mark.parametrize("call,error,text", [
    (lambda: xent.cross_entropy(LOGITS, TARGET.astype(np.float32)), TypeError,
     "target must hold class indices as int32, int64 or uint8; received dtype float32"),
    (lambda: xent.cross_entropy(LOGITS, TARGET.astype(np.int8)), TypeError,
     "target must hold class indices as int32, int64 or uint8; received dtype int8"),
    (lambda: xent.cross_entropy(LOGITS, np.array([0, 1, 2])), ValueError,
     "target must have shape [2] (one class index per token); received shape [3]"),
    (lambda: xent.cross_entropy(np.zeros((2, 0), np.float32), TARGET), ValueError,
     "logits must have shape [..., V] with V >= 1 classes on the last axis; received shape [2, 0]"),
    (lambda: xent.cross_entropy(LOGITS.astype(np.int32), TARGET), TypeError,
     "logits must have a floating dtype (float16, bfloat16, float32, float64); received int32"),
    (lambda: xent.linear_cross_entropy(LOGITS, np.zeros(5, np.float32), TARGET), ValueError,
     "weight must be 2-D, [V, H]; received shape [5]"),
    (lambda: xent.linear_cross_entropy(LOGITS, np.zeros((3, 4), np.float32), TARGET), ValueError,
     "weight's second dimension H must equal input's last dimension 5; received weight shape [3, 4]"),
    (lambda: xent.linear_cross_entropy(LOGITS, np.zeros((3, 5), np.float32), np.array([0])), ValueError,
     "target must have shape [2] (one class index per token); received shape [1]"),
    (lambda: xent.linear_cross_entropy(LOGITS, np.zeros((3, 5), np.float32), TARGET,
                                       bias=np.zeros(4, np.float32)), ValueError,
     "bias must have shape [V] = [3]; received shape [4]"),
    (lambda: xent.linear_cross_entropy(LOGITS, np.zeros((3, 5), np.float64), TARGET), TypeError,
     "weight must have input's dtype float32; received float64"),
    (lambda: xent.linear_cross_entropy(LOGITS, np.zeros((3, 5), np.float32), TARGET, chunk_size=0),
     ValueError, "chunk_size must be a positive integer or None; received 0"),
    (lambda: xent.linear_cross_entropy(LOGITS, np.zeros((3, 5), np.float32), TARGET, chunk_size=2.0),
     TypeError, "chunk_size must be an integer; received 2.0"),
    (lambda: xent.linear_cross_entropy(np.zeros((3, 0), np.float32), np.zeros((4, 0), np.float32),
                                       np.array([0, 1, 2])), ValueError,
     "input must have shape [..., H] with H >= 1 features on the last axis; received shape [3, 0]"),
])
def test_bad_arrays_are_named(call, error, text):
    with pytest.raises(error) as info:
        call()
    assert str(info.value) == text


def test_integer_options_take_any_integer_type():
    """NumPy's integers (and 0-d integer arrays) are integers: the same results as ints."""
    x, w, b, target = make_linear(9, 4, 7, np.float64, seed=17)
    target[target == 3] = 5   # (a class made ignored below)
    target[target == -100] = 3
    want = xent.linear_cross_entropy(x, w, target, ignore_index=3, chunk_size=2)
    for kind in (np.int64, np.int32, np.array):
        got = xent.linear_cross_entropy(x, w, target, ignore_index=kind(3), chunk_size=kind(2))
        assert got == want


@pytest.mark.parametrize("framework", ["numpy", "torch", "jax"])
@pytest.mark.parametrize("function", ["cross_entropy", "linear_cross_entropy"])
def test_uint8_targets_are_taken_as_torch_takes_them(framework, function):
    """torch's F.cross_entropy takes uint8 class indices (segmentation masks with
    ignore_index=255): the same numbers and gradients, on every array type (they
    had been refused: an independent review)."""
    torch = pytest.importorskip("torch")
    x, w, _, _ = make_linear(6, 4, 300, np.float32, seed=5)
    target = np.array([1, 255, 3, 255, 200, 7], np.uint8)
    logits = (x.astype(np.float64) @ w.astype(np.float64).T)
    leaf = torch.tensor(logits, requires_grad=True)
    want = torch.nn.functional.cross_entropy(leaf, torch.tensor(target), ignore_index=255)
    want.backward()
    convert = {"numpy": np.asarray, "torch": torch.tensor,
               "jax": pytest.importorskip("jax.numpy").asarray}[framework]
    if function == "cross_entropy":
        got = xent.cross_entropy(convert(logits.astype(np.float32)), convert(target),
                                 ignore_index=255)
    else:
        got = xent.linear_cross_entropy(convert(x), convert(w), convert(target), ignore_index=255)
    np.testing.assert_allclose(float(got), want.item(), rtol=2e-6)
    if framework == "numpy" and function == "cross_entropy":
        _, grad = xent.cross_entropy(logits, target, ignore_index=255, return_grads=True)
        np.testing.assert_allclose(grad, leaf.grad.numpy(), rtol=1e-12, atol=1e-15)
    with pytest.raises(InvalidArgumentError, match="label value of 200"):
        xent.cross_entropy(convert(logits[:, :100].astype(np.float32)), convert(target),
                           ignore_index=255)


def test_a_target_out_of_range_raises_tensorflows_error_before_any_work():
    logits = np.zeros((3, 5), np.float32)
    for bad in (5, -1):
        target = np.array([0, bad, -100])
        with pytest.raises(InvalidArgumentError) as info:
            xent.cross_entropy(logits, target, return_grads=True, inplace_backward=True)
        assert str(info.value) == (   # (TF's message, then whose values they are)
            f"Received a label value of {bad} which is outside the valid range of [0, 5).  "
            f"Label values: 0 {bad} -100 (the values of `target`; those equal to "
            f"ignore_index=-100 are skipped)")
        assert not logits.any()
        with pytest.raises(InvalidArgumentError):
            xent.linear_cross_entropy(np.ones((3, 2), np.float32), np.ones((5, 2), np.float32), target)
    # ignore_index itself may lie outside [0, V): it is skipped, not checked
    assert np.isfinite(xent.cross_entropy(logits, np.array([0, 7, 1]), ignore_index=7))


# -- torch ----------------------------------------------------------------------------------------

TORCH_DTYPES = {np.float64: "float64", np.float32: "float32", np.float16: "float16",
                ml_dtypes.bfloat16: "bfloat16"}


@pytest.fixture(params=["kernel", "torch ops"])
def torch_path(request):
    """The CPU kernel path, and the torch-ops path of other devices (run on the CPU)."""
    from xent import _torch
    _torch.use_torch_ops_on_cpu(request.param == "torch ops")
    yield request.param
    _torch.use_torch_ops_on_cpu(False)


def _tensor(a, dtype, grad=True):
    t = torch.tensor(np.asarray(a, np.float64)).to(getattr(torch, TORCH_DTYPES[dtype]))
    return t.requires_grad_(grad)


@pytest.mark.parametrize("dtype", TORCH_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_torch_autograd_matches_the_oracle(torch_path, reduction, dtype):
    rng = np.random.default_rng(10)
    x, w, b, target = make_linear(21, 8, 37, dtype, seed=10)
    up = rng.normal(size=21) if reduction == "none" else None
    t = torch.tensor(target)
    opts = OPTIONS["all"]
    # cross_entropy on logits that are themselves computed (so inplace_backward is allowed)
    logits = x.astype(np.float64) @ w.astype(np.float64).T
    leaf = _tensor(logits, dtype)
    for inplace in (False, True):
        leaf.grad = None
        loss = xent.cross_entropy(leaf * 1, t, reduction=reduction, inplace_backward=inplace, **opts)
        (loss.double() * (1.0 if up is None else torch.tensor(up))).sum().backward()
        truth, truth_grad = oracle(leaf.detach().double().numpy(), target, opts, reduction, up)
        assert loss.dtype == leaf.dtype
        assert_close(loss.detach().double().numpy(), truth, dtype)
        assert_close(leaf.grad.double().numpy(), truth_grad, dtype)
    xt, wt, bt = (_tensor(a, dtype) for a in (x, w, b))
    loss = xent.linear_cross_entropy(xt, wt, t, bias=bt, reduction=reduction, chunk_size=4, **opts)
    (loss.double() * (1.0 if up is None else torch.tensor(up))).sum().backward()
    truth, dx, dw, db = linear_oracle(*(a.detach().double().numpy() for a in (xt, wt, bt)),
                                      target, opts, reduction, up)
    assert_close(loss.detach().double().numpy(), truth, dtype)
    for got, want in ((xt.grad, dx), (wt.grad, dw), (bt.grad, db)):
        assert got.dtype == xt.dtype
        assert_close(got.double().numpy(), want, dtype)


def test_torch_gradcheck_in_float64(torch_path):
    rng = np.random.default_rng(11)
    t = torch.tensor([3, -100, 0, 5, 2])
    logits = torch.tensor(rng.normal(size=(5, 7)), requires_grad=True)
    x = torch.tensor(rng.normal(size=(5, 3)), requires_grad=True)
    w = torch.tensor(rng.normal(size=(7, 3)), requires_grad=True)
    b = torch.tensor(rng.normal(size=7), requires_grad=True)
    for reduction in REDUCTIONS:
        kw = dict(reduction=reduction, **OPTIONS["all"])
        assert torch.autograd.gradcheck(lambda z: xent.cross_entropy(z * 1, t, **kw), (logits,))
        assert torch.autograd.gradcheck(
            lambda x, w, b: xent.linear_cross_entropy(x, w, t, bias=b, chunk_size=2, **kw), (x, w, b))


def test_torch_inplace_backward_overwrites_the_logits_and_refuses_unsafe_ones():
    z = torch.randn(4, 6, requires_grad=True)
    t = torch.tensor([0, 1, 2, 3])
    logits = z * 2
    loss = xent.cross_entropy(logits, t, inplace_backward=True)
    expected = torch.softmax(2 * z.detach(), -1) - F.one_hot(t, 6)
    assert torch.allclose(logits.detach(), expected / 4, atol=1e-6)   # the gradient, already
    loss.backward()
    assert torch.allclose(z.grad, 2 * expected / 4, atol=1e-6)
    with pytest.raises(ValueError, match="a leaf tensor that requires grad"):
        xent.cross_entropy(z, t, inplace_backward=True)
    with pytest.raises(ValueError, match="needs contiguous logits"):
        xent.cross_entropy((z * 1).t().contiguous().t(), t, inplace_backward=True)


def test_torch_inplace_backward_refuses_a_view_of_a_leaf():
    z = torch.randn(4, 6, requires_grad=True)
    with pytest.raises(ValueError, match="a view of a leaf tensor that requires grad"):
        xent.cross_entropy(z[1:], torch.tensor([0, 1, 2]), inplace_backward=True)
    assert z.grad is None and z._version == 0


def test_torch_inplace_backward_has_no_effect_where_the_operator_runs():
    """Under torch.func (and off the CPU) the registered operator runs and
    inplace_backward changes nothing, as documented: the differentiated input,
    a leaf there, was refused with a message about its .grad."""
    from xent import _torch

    z, t = torch.randn(4, 6, dtype=torch.float64), torch.tensor([0, 1, 2, 3])
    want = torch.func.grad(lambda z: xent.cross_entropy(z, t, z_loss=0.1))(z)
    got = torch.func.grad(lambda z: xent.cross_entropy(z, t, z_loss=0.1, inplace_backward=True))(z)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=0)
    leaf = z.clone().requires_grad_(True)
    _torch.use_torch_ops_on_cpu(True)
    try:
        xent.cross_entropy(leaf, t, z_loss=0.1, inplace_backward=True).backward()
    finally:
        _torch.use_torch_ops_on_cpu(False)
    torch.testing.assert_close(leaf.grad, want, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(leaf.detach(), z, rtol=0, atol=0)


def test_torch_ignored_tokens_with_inf_and_nan_logits_add_nothing(torch_path):
    z = torch.randn(5, 7, dtype=torch.float64)
    z[1, 2], z[3] = float("inf"), float("nan")
    z.requires_grad_(True)
    t = torch.tensor([0, -100, 2, -100, 6])
    x, w = torch.randn(5, 3, requires_grad=True), torch.randn(7, 3, requires_grad=True)
    with torch.no_grad():
        x[3] = float("nan")
    for kw in ({}, OPTIONS["all"]):
        z.grad = x.grad = w.grad = None
        (xent.cross_entropy(z * 1, t, **kw) + xent.linear_cross_entropy(x, w, t, **kw)).backward()
        assert all(torch.isfinite(g).all() for g in (z.grad, x.grad, w.grad))
        assert not z.grad[[1, 3]].any() and not x.grad[[1, 3]].any()
        keep = [0, 2, 4]
        truth = oracle(z.detach()[keep].numpy(), t[keep].numpy(), kw, "mean")[1]
        assert_close(z.grad[keep].numpy(), truth, np.float64)


def _nan_upstream_step(ce, z, t, reduction):
    """A loss whose upstream gradient is NaN on the ignored token 2 ("none": per
    token, as an all-padding sequence's guarded 0/0 gives) or NaN whole."""
    losses = ce(z, t, reduction=reduction)
    if reduction == "none":
        return (losses * torch.tensor([1.0, 1.0, float("nan")], dtype=losses.dtype)).sum()
    return losses * float("nan")


@pytest.mark.parametrize("how", ["eager", "torch.func"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_torch_ignored_tokens_under_a_nan_upstream_gradient_keep_torchs_zero_rows(
        torch_path, how, reduction):
    """Ignored tokens' rows stay 0 whatever their upstream gradient is, as
    `F.cross_entropy`'s: the kernel path scaled them by it (0 · NaN = NaN),
    which ``x @ W.T`` then spread over all of W's gradient."""
    _check_nan_upstream(how, reduction)


@pytest.mark.parametrize("reduction", ["none", "mean"])
def test_compiled_ignored_tokens_under_a_nan_upstream_gradient_keep_torchs_zero_rows(reduction):
    _check_nan_upstream("torch.compile", reduction)


def _check_nan_upstream(how, reduction):
    """The gradient of `_nan_upstream_step` through xent and `F.cross_entropy`, taken `how`."""
    z0, t = torch.randn(3, 5, dtype=torch.float32), torch.tensor([1, 4, -100])

    def grad(ce):
        step = lambda z: _nan_upstream_step(ce, z, t, reduction)
        if how == "torch.func":
            return torch.func.grad(step)(z0)
        if how == "torch.compile":
            torch.compiler.reset()
            step = torch.compile(step, fullgraph=True)
        z = z0.clone().requires_grad_(True)
        step(z).backward()
        return z.grad

    got, want = grad(xent.cross_entropy), grad(torch.nn.functional.cross_entropy)
    assert (got[2] == 0).all()
    torch.testing.assert_close(got, want, equal_nan=True)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_linear_ignored_tokens_under_a_nan_upstream_gradient_keep_torchs_zero_rows(
        torch_path, reduction):
    """`linear_cross_entropy`: an ignored token's row of the input's gradient stays 0
    under a NaN upstream gradient, as through `F.cross_entropy(x @ W.T)` (mean and
    sum scaled their forward's gradients by g whole: NaN rows, a review)."""
    x0, w0 = torch.randn(3, 4, dtype=torch.float32), torch.randn(5, 4, dtype=torch.float32)
    t = torch.tensor([1, 4, -100])
    grads = []
    for ce in (lambda x, w: xent.linear_cross_entropy(x, w, t, reduction=reduction),
               lambda x, w: torch.nn.functional.cross_entropy(x @ w.t(), t, reduction=reduction)):
        x, w = x0.clone().requires_grad_(True), w0.clone().requires_grad_(True)
        losses = ce(x, w)
        up = torch.tensor([1.0, 1.0, float("nan")]) if reduction == "none" else float("nan")
        (losses * up).sum().backward()
        grads.append((x.grad, w.grad))
    assert (grads[0][0][2] == 0).all()
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, equal_nan=True)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_torch_linear_weight_changed_in_place_before_backward_raises_as_torchs(reduction):
    """mean and sum make their gradients in the forward, so their backward read
    no saved tensor and gave the forward-time weight's gradient without a word;
    torch's matmul raises, and so does xent now (``"none"`` did already)."""
    x, w = torch.randn(6, 4, requires_grad=True), torch.randn(5, 4, requires_grad=True)
    t = torch.tensor([1, 2, 3, 0, 4, -100])
    for loss in (xent.linear_cross_entropy(x, w, t, reduction=reduction).sum(),
                 torch.nn.functional.cross_entropy(x @ w.t(), t, reduction=reduction).sum()):
        with torch.no_grad():
            w.add_(1.0)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            loss.backward()


@pytest.mark.parametrize("case", ["float16", "retained float32", "linear none", "linear float16"])
def test_torch_target_changed_in_place_before_a_backward_that_reads_it_raises_as_torchs(case):
    """The backwards that run the kernel again (float16, a second backward over a
    retained graph, the linear head's ``"none"`` and float16) read the targets
    again: one changed in place since the forward (a loader reusing its label
    buffer) gave the new labels' gradient, and an out-of-range one a NaN row,
    without a word; torch's F.cross_entropy raises, and so does xent now."""
    g = torch.Generator().manual_seed(3)
    t = torch.tensor([1, 2, 3, 0, 4, -100])
    dtype = torch.float16 if "float16" in case else torch.float32
    if case.startswith("linear"):
        x = torch.randn(6, 4, generator=g).to(dtype).requires_grad_(True)
        w = torch.randn(5, 4, generator=g).to(dtype)
        loss = xent.linear_cross_entropy(x, w, t, reduction="none" if "none" in case else "mean").sum()
    else:
        z = torch.randn(6, 5, generator=g).to(dtype).requires_grad_(True)
        loss = xent.cross_entropy(z, t)
        if case == "retained float32":
            loss.backward(retain_graph=True)
    t[0] = 3
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_torch_targets_made_under_inference_mode_still_work():
    """Saving the target for autograd's version check refused inference tensors
    ("Inference tensors cannot be saved for backward"): they cannot change in
    place outside inference mode, so they are not saved (a review)."""
    with torch.inference_mode():
        t = torch.tensor([1, 2, 0, -100])
    normal = t.clone()
    g = torch.Generator().manual_seed(4)
    z, x, w = torch.randn(4, 3, generator=g), torch.randn(4, 2, generator=g), torch.randn(3, 2, generator=g)
    steps = (lambda a, t: xent.cross_entropy(a.half(), t),
             lambda a, t: xent.linear_cross_entropy(a, w, t, reduction="none").sum())
    for step, a in zip(steps, (z, x)):
        grads = []
        for target in (t, normal):
            leaf = a.clone().requires_grad_(True)
            step(leaf, target).backward()
            grads.append(leaf.grad)
        torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)


def test_torch_no_tokens(torch_path):
    x, w = torch.randn(0, 3, requires_grad=True), torch.randn(7, 3, requires_grad=True)
    t = torch.zeros(0, dtype=torch.int64)
    for loss in (xent.linear_cross_entropy(x, w, t), xent.cross_entropy(x @ w.t(), t)):
        x.grad = w.grad = None
        loss.backward()
        assert loss.item() == 0 and x.grad.shape == (0, 3) and not w.grad.any()


def test_torch_makes_no_gradient_nobody_asked_for(monkeypatch):
    """Under no_grad, or for a frozen head, the kernel path makes only what autograd
    will use (no logits-sized buffer at evaluation time)."""
    from xent._large_vocab import _torch as face, _torch_chunks as chunks
    made = []
    kernel, loop = face.losses_and_gradient, chunks.chunked

    def spy_kernel(*args, **kw):
        made.append(("logits", args[5] is not None if len(args) > 5 else kw.get("grad_out") is not None))
        return kernel(*args, **kw)

    def spy_loop(*args, **kw):
        grads = args[9] if len(args) > 9 else kw.get("grads")
        made.append(("linear", None if grads is None else tuple(g is not None for g in grads)))
        return loop(*args, **kw)

    monkeypatch.setattr(face, "losses_and_gradient", spy_kernel)
    monkeypatch.setattr(chunks, "chunked", spy_loop)
    x, w, b = torch.randn(6, 3, requires_grad=True), torch.randn(9, 3), torch.randn(9, requires_grad=True)
    t = torch.tensor([0, 1, 2, 3, -100, 8])
    with torch.no_grad():
        xent.cross_entropy(x @ w.t(), t)
        xent.linear_cross_entropy(x, w, t, bias=b)
    assert made == [("logits", False), ("linear", None)]
    made.clear()
    loss = xent.linear_cross_entropy(x, w, t, bias=b)   # a frozen weight: dx and db only
    loss.backward()
    assert made == [("linear", (True, False, True))] and w.grad is None
    truth = linear_oracle(x.detach().numpy(), w.numpy(), b.detach().numpy(), t.numpy(), {}, "mean")
    assert_close(x.grad.numpy(), truth[1], np.float32)
    assert_close(b.grad.numpy(), truth[3], np.float32)


def test_torch_float16_gradient_under_a_loss_scale_is_rounded_once():
    """Mixed-precision training multiplies the loss by a scale so that small float16
    gradients survive: the gradient must be rounded after that scale, as autograd
    does, not made at 1/count (below float16's smallest, 6e-8, for p < 2.4e-4 at
    4096 tokens) and scaled after."""
    rng = np.random.default_rng(15)
    n, v, h, scale = 4096, 64, 8, 2.0 ** 12
    logits = rng.normal(size=(n, v)) * 3
    target = torch.tensor(rng.integers(0, v, n))
    truth = oracle(logits.astype(np.float16).astype(np.float64), target.numpy(), {}, "mean")[1]
    z = torch.tensor(logits, dtype=torch.float16, requires_grad=True)
    (xent.cross_entropy(z * 1, target).float() * scale).backward()
    got, want = z.grad.double().numpy(), truth * scale
    assert not (got == 0)[np.abs(want) >= 2.0 ** -24].any()   # would round to float16's smallest
    assert (np.abs(got - want) <= TOL[np.float16] * np.abs(want) + 2.0 ** -24).all()
    x = torch.tensor(rng.normal(size=(n, h)), dtype=torch.float16, requires_grad=True)
    w = torch.tensor(rng.normal(size=(v, h)), dtype=torch.float16, requires_grad=True)
    (xent.linear_cross_entropy(x, w, target).float() * scale).backward()
    _, dx, dw, _ = linear_oracle(x.detach().double().numpy(), w.detach().double().numpy(), None,
                                 target.numpy(), {}, "mean", np.full((), scale))
    assert_close(x.grad.double().numpy(), dx, np.float16)
    assert_close(w.grad.double().numpy(), dw, np.float16)


def test_torch_double_backward_is_refused_on_the_kernel():
    z = torch.randn(3, 4, requires_grad=True)
    x, w = torch.randn(3, 2, requires_grad=True), torch.randn(4, 2, requires_grad=True)
    t = torch.tensor([0, 1, 2])
    for loss, wrt in ((xent.cross_entropy(z * 1, t), z), (xent.linear_cross_entropy(x, w, t), x)):
        with pytest.raises(RuntimeError, match="differentiable once"):
            torch.autograd.grad(loss, wrt, create_graph=True)


def test_torch_out_of_range_raises_on_the_cpu_and_is_nan_on_the_device_path(torch_path):
    logits = torch.zeros(2, 4, requires_grad=True)
    target = torch.tensor([1, 4])
    if torch_path == "kernel":
        with pytest.raises(InvalidArgumentError, match="label value of 4"):
            xent.cross_entropy(logits, target)
    else:
        assert torch.isnan(xent.cross_entropy(logits, target, reduction="none")[1])


def test_torch_a_second_backward_makes_the_gradients_again(torch_path):
    """A retained graph's second backward gives the same gradients (the first
    one's were handed over, and autograd accumulates the leaf's .grad into them)."""
    x, w = torch.randn(3, 2, requires_grad=True), torch.randn(4, 2, requires_grad=True)
    t = torch.tensor([0, 1, 2])
    for f in (lambda: xent.linear_cross_entropy(x, w, t, z_loss=0.1),
              lambda: xent.cross_entropy(x @ w.t(), t, z_loss=0.1)):
        x.grad = w.grad = None
        loss = f()
        loss.backward(retain_graph=True)
        once = x.grad.clone(), w.grad.clone()
        loss.backward(2 * torch.ones(()))
        assert torch.allclose(x.grad, 3 * once[0]) and torch.allclose(w.grad, 3 * once[1])
    if torch_path != "kernel":
        return   # (torch ops ignore inplace_backward: autograd makes the gradient)
    loss = xent.cross_entropy(x @ w.t(), t, inplace_backward=True)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="can run its backward once"):
        loss.backward()


@pytest.mark.parametrize("dtype,reduction", [(np.float64, "none"), (np.float32, "none"),
                                             (ml_dtypes.bfloat16, "none"), (np.float16, "mean"),
                                             (np.float16, "sum"), (np.float32, "mean")],
                         ids=lambda v: v if isinstance(v, str) else np.dtype(v).name)
def test_torch_linear_under_non_reentrant_checkpoint_matches_the_oracle(torch_path, dtype, reduction):
    """`torch.utils.checkpoint(use_reentrant=False)` lets a backward unpack its saved
    tensors once: the backwards that run the chunks again read them twice, and raised
    CheckpointError (reduction "none", float16)."""
    from torch.utils.checkpoint import checkpoint

    x, w, b, t = make_linear(6, 5, 17, np.float64, seed=8)
    upstream = np.linspace(-1.0, 2.0, 6) if reduction == "none" else None
    xt, wt, bt = (_tensor(a, dtype) for a in (x, w, b))
    loss = checkpoint(lambda x, w, b: xent.linear_cross_entropy(x, w, torch.from_numpy(t), bias=b,
                                                                 reduction=reduction, chunk_size=4),
                      xt, wt, bt, use_reentrant=False)
    loss.backward(None if upstream is None else torch.from_numpy(upstream).to(loss.dtype))
    want = linear_oracle(x, w, b, t, {}, reduction, upstream)
    for got, truth in zip((loss, xt.grad, wt.grad, bt.grad), want):
        assert_close(got.detach().double().numpy(), truth, dtype)


# -- JAX ------------------------------------------------------------------------------------------

@pytest.fixture(params=["kernel", "jax.numpy"])
def jax_path(request):
    """The CPU kernel through buffer callbacks, and the jax.numpy path of other devices."""
    from xent._large_vocab import _jax_cpu
    _jax_cpu.use_jax_numpy_on_cpu(request.param == "jax.numpy")
    yield request.param
    _jax_cpu.use_jax_numpy_on_cpu(False)


@pytest.mark.parametrize("function", ["cross_entropy", "linear_cross_entropy"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_jax_ignored_tokens_under_a_nan_upstream_gradient_keep_zero_rows(jax_path, reduction,
                                                                         function):
    """As torch's (`test_torch_ignored_tokens_under_a_nan_upstream_gradient_keep_torchs_zero_rows`):
    the kernel path's backward scaled ignored rows (of the logits, or of the
    linear head's input) by their NaN g."""
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((3, 5)), jnp.float32)   # (logits, or the head's input)
    w = jnp.asarray(rng.standard_normal((5, 5)), jnp.float32)
    t = jnp.asarray([1, 4, -100])
    up = jnp.asarray([1.0, 1.0, np.nan]) if reduction == "none" else jnp.float32(np.nan)
    if function == "cross_entropy":
        losses = lambda a: xent.cross_entropy(a, t, reduction=reduction)
    else:
        losses = lambda a: xent.linear_cross_entropy(a, w, t, reduction=reduction)
    step = lambda a: (losses(a) * up).sum()
    for grad in (jax.grad(step)(x), jax.jit(jax.grad(step))(x)):
        assert (np.asarray(grad[2]) == 0).all()
        assert np.isnan(np.asarray(grad[:2])).all() == (reduction != "none")


@pytest.mark.parametrize("dtype", [np.float32, np.float64, ml_dtypes.bfloat16],
                         ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_jax_jit_grad_matches_the_oracle(jax_path, reduction, dtype):
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    rng = np.random.default_rng(12)
    x, w, b, target = make_linear(19, 6, 29, dtype, seed=12)
    up = rng.normal(size=19) if reduction == "none" else None
    opts = OPTIONS["all"]
    weights = 1.0 if up is None else up
    with jax.enable_x64(dtype == np.float64):
        f = jax.jit(jax.value_and_grad(
            lambda x, w, b: (xent.linear_cross_entropy(x, w, jnp.asarray(target), bias=b,
                                                       reduction=reduction, chunk_size=4, **opts)
                             .astype(jnp.float64 if dtype == np.float64 else jnp.float32)
                             * weights).sum(), argnums=(0, 1, 2)))
        value, grads = f(*(jnp.asarray(a) for a in (x, w, b)))
        logits = x.astype(np.float64) @ w.astype(np.float64).T + b.astype(np.float64)
        g = jax.jit(jax.grad(lambda z: (xent.cross_entropy(z, jnp.asarray(target), reduction=reduction,
                                                           **opts) * weights).sum()))
        dz = g(jnp.asarray(logits.astype(dtype)))
    truth, dx, dw, db = linear_oracle(*(np.asarray(a, np.float64) for a in (x, w, b)),
                                      target, opts, reduction, up)
    assert_close(value, (truth * weights).sum(), dtype, scale=np.abs(truth * weights).sum())
    for got, want in zip(grads, (dx, dw, db)):
        assert got.dtype == dtype
        assert_close(np.asarray(got, np.float64), want, dtype)
    assert_close(np.asarray(dz, np.float64),
                 oracle(logits.astype(dtype).astype(np.float64), target, opts, reduction, up)[1], dtype)


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16, np.float16],
                         ids=lambda d: np.dtype(d).name)
def test_jax_kernel_gradient_reuses_the_logits_buffer_and_never_changes_the_callers(dtype):
    """On the CPU kernel `cross_entropy`'s gradient is written over the logits' buffer
    (an XLA alias) when it has their dtype (float16's is float32): a step whose
    logits die at the loss holds one logits-sized buffer, and reuses a donated one.
    Where the logits live on, XLA copies them first: the caller's array and later
    uses keep their values. Each gradient against the float64 oracle."""
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    logits, target = make((48,), 700, dtype, seed=17)
    opts = OPTIONS["all"]
    want = oracle(logits.astype(np.float64), target, opts, "mean")[1]
    loss = lambda z: xent.cross_entropy(z, jnp.asarray(target), **opts).astype(jnp.float32)  # noqa: E731
    step = jax.value_and_grad(loss)
    x = jnp.asarray(logits)
    check = lambda grad: assert_close(np.asarray(grad, np.float64), want, dtype)  # noqa: E731

    check(jax.jit(step)(x)[1])
    grad, again = jax.jit(lambda z: (jax.grad(loss)(z), z * 2))(x)
    check(grad)
    np.testing.assert_array_equal(np.asarray(again), np.asarray(logits * 2))
    np.testing.assert_array_equal(np.asarray(x), logits)

    donated = jnp.array(logits)
    pointer = donated.unsafe_buffer_pointer()
    grad = jax.jit(step, donate_argnums=0)(donated)[1]
    check(grad)
    assert grad.unsafe_buffer_pointer() == pointer   # (float16: the backward's cast, into it)

    one = jnp.asarray(1, dtype)
    inner = jax.jit(lambda z, s: step(z * s))
    check(inner(x, one)[1])
    stats = inner.lower(x, one).compile().memory_analysis()
    held = stats.output_size_in_bytes + stats.temp_size_in_bytes
    if np.dtype(dtype) != np.float16:   # (two buffers without the alias)
        assert held < x.nbytes + 64 * len(target), (held, x.nbytes)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_jax_checkpoint_runs_the_loss_only_kernel_forward_and_keeps_the_memory(reduction):
    """Under `jax.checkpoint` the forward's gradient is a residual that remat
    drops: the custom_vjp forward ran the loss-and-gradient kernel twice, each
    over a copy of the logits (3x the logits held, 2 with optax: an
    independent review). With `optimize_remat` the forward runs the loss-only
    kernel and the backward the one that writes the gradient: at most 2x, and
    the oracle's gradient. (A `"none"` loss scaled by the caller: 2x.)"""
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    rng = np.random.default_rng(4)
    h = jnp.asarray(rng.normal(size=(128, 16)).astype(np.float32))
    w = jnp.asarray((rng.normal(size=(16, 1024)) * 0.3).astype(np.float32))
    target = rng.integers(0, 1024, 128)
    target[::7] = -100
    loss = jax.checkpoint(lambda w: xent.cross_entropy(h @ w, jnp.asarray(target),
                                                       reduction=reduction).sum())
    step = jax.jit(jax.value_and_grad(loss))
    stats = step.lower(w).compile().memory_analysis()
    assert stats.temp_size_in_bytes <= 2 * 128 * 1024 * 4 + 4096, stats.temp_size_in_bytes
    logits = np.asarray(h, np.float64) @ np.asarray(w, np.float64)
    value, grad = step(w)
    truth, dz = oracle(logits, target, {}, reduction)
    dz = np.asarray(dz, np.float64)   # (the gradient of the sum of the losses)
    np.testing.assert_allclose(float(value), np.sum(truth), rtol=2e-6)
    np.testing.assert_allclose(np.asarray(grad, np.float64), np.asarray(h, np.float64).T @ dz,
                               rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16], ids=lambda d: np.dtype(d).name)
def test_jax_per_token_losses_reduced_by_the_caller_scale_the_gradient_in_its_buffer(dtype):
    """`cross_entropy(..., reduction="none")` then ``.mean()`` or a weighted sum: the
    backward's ``g ⊙ grad`` was a `jnp` product into a fresh buffer (2x the
    logits held, a review); `_jax_rows.scale_rows` writes it over the
    gradient's own (1x). Each product rounded once: the oracle's gradient."""
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    rng = np.random.default_rng(6)
    h = jnp.asarray(rng.normal(size=(96, 16)).astype(dtype))
    w = jnp.asarray((rng.normal(size=(16, 1536)) * 0.3).astype(dtype))
    target = rng.integers(0, 1536, 96)
    target[::5] = -100
    up = rng.normal(size=96)

    def loss(w):
        losses = xent.cross_entropy(h @ w, jnp.asarray(target), reduction="none")
        return (losses.astype(jnp.float32) * jnp.asarray(up, jnp.float32)).sum()

    def held(fn):
        return jax.jit(jax.grad(fn)).lower(w).compile().memory_analysis().temp_size_in_bytes

    step = jax.jit(jax.grad(loss))
    mean = held(lambda w: xent.cross_entropy(h @ w, jnp.asarray(target)).astype(jnp.float32))
    assert held(loss) <= mean + 8192, (held(loss), mean)   # (bfloat16: XLA's float32 matmul too)
    if dtype == np.float32:
        assert mean <= 96 * 1536 * 4 + 8192
    dz = jax.jit(jax.grad(lambda z: (xent.cross_entropy(z, jnp.asarray(target), reduction="none")
                                     .astype(jnp.float32) * jnp.asarray(up, jnp.float32)).sum()))(h @ w)
    logits = np.asarray(h @ w, np.float64)
    assert_close(np.asarray(dz, np.float64), oracle(logits, target, {}, "none", up)[1], dtype)
    np.testing.assert_allclose(np.asarray(step(w), np.float64),
                               np.asarray(h, np.float64).T @ np.asarray(dz, np.float64),
                               rtol=2e-2 if dtype != np.float32 else 1e-5, atol=1e-3 if dtype != np.float32 else 1e-6)


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_jax_shard_map_with_a_replicated_weight_matches_the_oracle(jax_path, reduction):
    """Inside `shard_map` (tokens split over the mesh axis, the weight replicated),
    `cross_entropy`'s and `linear_cross_entropy`'s gradients are the oracle's; the
    replicated weight and bias get the sum of the shards' gradients, as JAX's
    own autodiff gives them. Both paths failed JAX's type checks: the custom
    rules returned a varying gradient for a weight that does not vary, and the
    `jax.numpy` chunk loop's sums began as zeros that did not vary either. A
    one-device mesh: the types are checked whatever the device count."""
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    from jax.sharding import Mesh, PartitionSpec as P
    mesh = Mesh(np.array(jax.devices()[:1]), ("d",))
    x, w, b, target = make_linear(10, 6, 23, np.float32, seed=21)
    opts = OPTIONS["all"]
    up = np.random.default_rng(21).normal(size=10) if reduction == "none" else None
    scale = 1.0 if up is None else jnp.asarray(up, jnp.float32)
    upstream = (lambda us: us) if reduction == "none" else (lambda us: 1.0)  # noqa: E731

    def grads(xs, ws, bs, ts, us):
        loss = lambda x, w, b: (xent.linear_cross_entropy(x, w, ts, bias=b, reduction=reduction,  # noqa: E731
                                                          chunk_size=4, **opts) * upstream(us)).sum()
        return jax.grad(loss, argnums=(0, 1, 2))(xs, ws, bs)

    rows, every = P("d"), P()
    got = jax.jit(jax.shard_map(grads, mesh=mesh, in_specs=(rows, every, every, rows, rows),
                                out_specs=(rows, every, every)))(
        *(jnp.asarray(a) for a in (x, w, b, target)), jnp.broadcast_to(scale, (10,)))
    _, dx, dw, db = linear_oracle(*(np.asarray(a, np.float64) for a in (x, w, b)), target, opts,
                                  reduction, up)
    for g, want in zip(got, (dx, dw, db)):
        assert_close(np.asarray(g, np.float64), want, np.float32)
    logits = (x.astype(np.float64) @ w.astype(np.float64).T + b).astype(np.float32)
    dz = jax.jit(jax.shard_map(
        lambda z, t, us: jax.grad(lambda z: (xent.cross_entropy(z, t, reduction=reduction, **opts)
                                             * upstream(us)).sum())(z),
        mesh=mesh, in_specs=(rows, rows, rows), out_specs=rows))(
        jnp.asarray(logits), jnp.asarray(target), jnp.broadcast_to(scale, (10,)))
    assert_close(np.asarray(dz, np.float64),
                 oracle(logits.astype(np.float64), target, opts, reduction, up)[1], np.float32)


_TWO_DEVICE_SCRIPT = """
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
import numpy as np, jax, jax.numpy as jnp, xent
from jax.sharding import Mesh, PartitionSpec as P
x, w, b, target = (np.load(sys.argv[1])[k] for k in ("x", "w", "b", "target"))
mesh = Mesh(np.array(jax.devices()), ("d",))
def grads(xs, ws, bs, ts):
    loss = lambda x, w, b: xent.linear_cross_entropy(x, w, ts, bias=b, reduction="sum", chunk_size=3)
    return jax.grad(loss, argnums=(0, 1, 2))(xs, ws, bs)
rows, every = P("d"), P()
out = jax.jit(jax.shard_map(grads, mesh=mesh, in_specs=(rows, every, every, rows),
                            out_specs=(rows, every, every)))(x, w, b, target)
assert len(jax.devices()) == 2
np.savez(sys.argv[2], dx=out[0], dw=out[1], db=out[2])
"""


def test_jax_shard_map_over_two_devices_sums_the_replicated_weights_gradient(tmp_path):
    """With two (host) devices, each holding half the tokens, `linear_cross_entropy`'s
    gradients under `shard_map` are the oracle's for the whole batch: the
    replicated weight and bias get the sum of both halves' gradients. (A fresh
    process: the device count is fixed when JAX starts.)"""
    import subprocess
    import sys

    pytest.importorskip("jax")
    x, w, b, target = make_linear(12, 5, 19, np.float32, seed=22)
    np.savez(tmp_path / "in.npz", x=x, w=w, b=b, target=target)
    subprocess.run([sys.executable, "-c", _TWO_DEVICE_SCRIPT, str(tmp_path / "in.npz"),
                    str(tmp_path / "out.npz")], check=True, timeout=300)
    got = np.load(tmp_path / "out.npz")
    _, dx, dw, db = linear_oracle(*(np.asarray(a, np.float64) for a in (x, w, b)), target, {}, "sum")
    for name, want in (("dx", dx), ("dw", dw), ("db", db)):
        assert_close(got[name].astype(np.float64), want, np.float32)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_jax_float16_gradient_under_a_loss_scale_is_rounded_once(jax_path, reduction):
    """As the torch test above: on the CPU kernel too, a float16 gradient is rounded
    after the loss scale multiplies it (the kernel's is float32 until then), so
    no small entry flushes to 0. With ``"none"`` the upstream gradient of the
    float16 losses is float16 itself: it is rounded first, as JAX has it."""
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    rng = np.random.default_rng(16)
    n, v, scale = 4096, 64, 2.0 ** 12
    logits = (rng.normal(size=(n, v)) * 3).astype(np.float16)
    target = rng.integers(0, v, n)
    up = rng.normal(size=n) if reduction == "none" else None
    g = scale if up is None else (up * scale).astype(np.float16).astype(np.float64)
    truth = oracle(logits.astype(np.float64), target, {}, reduction,
                   None if up is None else g)[1] * (scale if up is None else 1.0)
    weights = 1.0 if up is None else jnp.asarray(up * scale, jnp.float32)
    loss = jax.jit(jax.grad(lambda z: (xent.cross_entropy(z, jnp.asarray(target), reduction=reduction)
                                       .astype(jnp.float32) * (scale if up is None else weights)).sum()))
    got = np.asarray(loss(jnp.asarray(logits)), np.float64)
    assert not (got == 0)[np.abs(truth) >= 2.0 ** -24].any()   # would round to float16's smallest
    assert (np.abs(got - truth) <= TOL[np.float16] * np.abs(truth) + 2.0 ** -24).all()


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_jax_float16_linear_gradients_under_a_loss_scale_are_rounded_once(jax_path, reduction):
    """`linear_cross_entropy`'s float16 gradients, made in the forward for a mean or
    sum, stay float32 until the loss scale multiplies them: rounded to float16
    first, 10 of dW's 128 entries flushed to 0 (small activations, 4096 tokens)."""
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    rng = np.random.default_rng(17)
    n, h, v, scale = 4096, 8, 16, 2.0 ** 12
    x = (rng.normal(size=(n, h)) * 1e-4).astype(np.float16)
    w = rng.normal(size=(v, h)).astype(np.float16)
    target = rng.integers(0, v, n)
    _, dx, dw, _ = linear_oracle(x.astype(np.float64), w.astype(np.float64), None, target, {},
                                 reduction, np.full((), scale))
    grads = jax.jit(jax.grad(lambda x, w: xent.linear_cross_entropy(
        x, w, jnp.asarray(target), reduction=reduction).astype(jnp.float32) * scale,
        argnums=(0, 1)))(jnp.asarray(x), jnp.asarray(w))
    for got, want in zip(grads, (dx, dw)):
        assert got.dtype == jnp.float16
        got = np.asarray(got, np.float64)
        assert not (got == 0)[np.abs(want) >= 2.0 ** -24].any()   # would round to float16's smallest
        assert_close(got, want, np.float16)


def test_jax_ignore_index_outside_the_targets_dtype_is_named(jax_path):
    """JAX compares targets with ignore_index in the targets' dtype (int32 without
    x64): one that does not fit is refused, named (not JAX's OverflowError)."""
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    for call in (lambda: xent.cross_entropy(jnp.ones((2, 3)), jnp.array([0, 1], jnp.int32),
                                            ignore_index=2 ** 31),
                 lambda: xent.linear_cross_entropy(jnp.ones((2, 3)), jnp.ones((4, 3)),
                                                   jnp.array([0, 1], jnp.int32), ignore_index=-2 ** 40)):
        with pytest.raises(ValueError, match=r"ignore_index=-?\d+ does not fit the target's dtype int32"):
            call()


def test_jax_vmap_and_targets_out_of_range(jax_path):
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    rng = np.random.default_rng(13)
    logits = rng.normal(size=(3, 4, 6)).astype(np.float32)
    target = rng.integers(0, 6, (3, 4))
    batched = jax.vmap(lambda z, t: xent.cross_entropy(z, t, label_smoothing=0.1))(
        jnp.asarray(logits), jnp.asarray(target))
    one_by_one = [xent.cross_entropy(logits[i], target[i], label_smoothing=0.1) for i in range(3)]
    np.testing.assert_allclose(batched, one_by_one, rtol=2e-6)
    bad = jnp.asarray([[0, 6, 1, 2]])
    with pytest.raises(InvalidArgumentError, match="label value of 6"):
        xent.cross_entropy(jnp.asarray(logits[:1]), bad)
    wide = np.array([[0, 2**32 + 1, 1, 2]])   # (JAX would hold it as class 1 without x64)
    with pytest.raises(InvalidArgumentError, match=str(2**32 + 1)):
        xent.cross_entropy(jnp.asarray(logits[:1]), wide)
    per = jax.jit(lambda z, t: xent.cross_entropy(z, t, reduction="none"))(jnp.asarray(logits[:1]), bad)
    assert np.isnan(per[0, 1]) and np.isfinite(np.delete(np.asarray(per[0]), 1)).all()


def test_jax_linear_mean_of_nothing_is_zero_and_a_bad_target_under_jit_is_nan(jax_path):
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    x, w, b, target = make_linear(7, 3, 11, np.float32, seed=14)
    f = jax.jit(jax.value_and_grad(lambda x, w, t: xent.linear_cross_entropy(x, w, t, chunk_size=3),
                                   argnums=(0, 1)))
    value, (dx, dw) = f(jnp.asarray(x), jnp.asarray(w), jnp.full(7, -100))
    assert value == 0 and not np.asarray(dx).any() and not np.asarray(dw).any()
    value, (dx, dw) = f(jnp.asarray(x), jnp.asarray(w), jnp.asarray([0, 1, 11, 2, 3, 4, 5]))
    assert np.isnan(value) and np.isnan(np.asarray(dx)[2]).all() and np.isfinite(np.asarray(dx)[3:]).all()
    with pytest.raises(InvalidArgumentError, match="label value of 11"):
        xent.linear_cross_entropy(jnp.asarray(x), jnp.asarray(w), jnp.asarray([0, 1, 11, 2, 3, 4, 5]))


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_jax_kernel_second_derivatives_raise_a_named_error(reduction):
    """On the CPU kernel (a buffer callback, no derivative of its own) a Hessian or a
    gradient of a gradient of either function raises xent's error, as on torch
    tensors, not JAX's "Buffer callbacks do not support JVP"."""
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    x = jnp.asarray(np.random.default_rng(3).normal(size=(4, 7)), jnp.float32)
    t = jnp.asarray([0, 1, 2, 1])
    ce = lambda z: xent.cross_entropy(z, t, reduction=reduction).sum()  # noqa: E731
    linear = lambda z: xent.linear_cross_entropy(z, x[:3], t, reduction=reduction).sum()  # noqa: E731
    for loss in (ce, linear):
        with pytest.raises(RuntimeError, match="differentiable once, in reverse mode"):
            jax.hessian(loss)(x)
        with pytest.raises(RuntimeError, match="differentiable once, in reverse mode"):
            jax.jit(jax.grad(lambda z: jax.grad(loss)(z).sum()))(x)


def test_jax_small_inputs_are_not_padded_to_a_whole_chunk():
    jax = pytest.importorskip("jax")
    from xent._large_vocab import _jax as face
    xs, ts = face._in_chunks(jax.numpy.ones((7, 3)), jax.numpy.zeros(7, int), 4096, -100)
    assert xs.shape == (1, 7, 3) and ts.shape == (1, 7)
    xs, ts = face._in_chunks(jax.numpy.ones((7, 3)), jax.numpy.zeros(7, int), 3, -100)
    assert xs.shape == (3, 3, 3) and (np.asarray(ts)[2, 1:] == -100).all()


def test_jax_loss_only_under_jit_makes_no_gradient(monkeypatch):
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    from xent._large_vocab import _jax_cpu
    made = []
    kernel, loop = _jax_cpu.losses_and_gradient, _jax_cpu.chunked
    monkeypatch.setattr(_jax_cpu, "losses_and_gradient",
                        lambda *a: made.append(("logits", a[5] is not None)) or kernel(*a))
    monkeypatch.setattr(_jax_cpu, "chunked",
                        lambda *a: made.append(("linear", a[9] is not None)) or loop(*a))
    x, w, b, target = make_linear(7, 3, 11, np.float32, seed=16)
    x, w, t = jnp.asarray(x), jnp.asarray(w), jnp.asarray(target)
    loss = jax.jit(lambda x, w, t: xent.cross_entropy(x @ w.T, t) + xent.linear_cross_entropy(x, w, t))
    truth = oracle(np.asarray(x @ w.T, np.float64), target, {}, "mean")[0]
    assert_close(loss(x, w, t), 2 * truth, np.float32)
    assert sorted(made) == [("linear", False), ("logits", False)]
    made.clear()
    jax.jit(jax.grad(lambda x: xent.cross_entropy(x @ w.T, t) + xent.linear_cross_entropy(x, w, t)))(x)
    assert sorted(made) == [("linear", True), ("logits", True)]


def test_return_grads_is_for_numpy_only():
    with pytest.raises(ValueError, match="return_grads=True is for NumPy arrays; torch arrays"):
        xent.cross_entropy(torch.zeros(2, 3), torch.tensor([0, 1]), return_grads=True)


def test_torch_compile_matches_eager():
    """torch.compile (its default mode; fullgraph in test_large_vocab_graphs.py) gives
    eager's values and gradients, for both large-vocabulary functions and a TF face."""
    torch.manual_seed(0)
    x, w = torch.randn(9, 4, requires_grad=True), torch.randn(13, 4, requires_grad=True)
    t = torch.tensor([0, 1, 2, -100, 4, 5, 6, 7, 12])

    def step(x, w):
        a = xent.linear_cross_entropy(x, w, t, z_loss=1e-3, chunk_size=4)
        b = xent.cross_entropy((x @ w.t()) * 2, t, label_smoothing=0.1)
        c = xent.nn.sparse_softmax_cross_entropy_with_logits(labels=t.clamp(min=0), logits=x @ w.t())
        return a + b + c.mean()

    eager = torch.autograd.grad(step(x, w), (x, w))
    compiled = torch.autograd.grad(torch.compile(step)(x, w), (x, w))
    for a, b in zip(eager, compiled):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(step(x, w), torch.compile(step)(x, w))


def test_an_out_of_range_target_among_ignored_ones_is_placed_in_the_callers_target():
    """With some tokens ignored, the error's count and positions are those of the
    target as given (not of the kept tokens), in its own shape, on NumPy and
    on torch tensors; ignored tokens are never counted as bad."""
    logits = np.zeros((50, 5), np.float32)
    target = np.zeros(50, np.int64)
    target[:10] = -100
    target[20], target[33] = 7, -2
    want = r"-2 which is outside the valid range of \[0, 5\).*2 of 50 label values are outside it: 7 at \[20\], -2 at \[33\]"
    with pytest.raises(InvalidArgumentError, match=want):
        xent.cross_entropy(logits, target)
    grid = r"2 of 50 label values are outside it: 7 at \[4, 0\], -2 at \[6, 3\]"
    with pytest.raises(InvalidArgumentError, match=grid):
        xent.cross_entropy(logits.reshape(10, 5, 5), target.reshape(10, 5))
    torch = pytest.importorskip("torch")
    with pytest.raises(InvalidArgumentError, match=want):
        xent.cross_entropy(torch.from_numpy(logits), torch.from_numpy(target))
    with pytest.raises(InvalidArgumentError, match=grid):
        xent.linear_cross_entropy(np.ones((10, 5, 2), np.float32), np.ones((5, 2), np.float32),
                                  target.reshape(10, 5))


SMOOTHING_PATHS = ("numpy", "torch kernel", "torch ops", "jax callback", "jax numpy")


def _smoothed(path, x, t, eps):
    """``(loss, d sum(loss)/d x)`` of `xent.cross_entropy` with label smoothing `eps`
    on one of `SMOOTHING_PATHS` (NumPy; torch on the kernel or in torch ops;
    JAX through the kernel's callback or in jax.numpy), as NumPy arrays."""
    jax = pytest.importorskip("jax")
    from xent import _jax_cpu
    from xent._torch import _math

    if path.startswith("torch"):
        _math.use_torch_ops_on_cpu(path == "torch ops")
        try:
            xt = torch.from_numpy(x.copy()).requires_grad_(True)
            loss = xent.cross_entropy(xt, torch.from_numpy(t), label_smoothing=eps,
                                      reduction="none")
            loss.sum().backward()
            return loss.detach().numpy(), xt.grad.numpy()
        finally:
            _math.use_torch_ops_on_cpu(False)
    if path.startswith("jax"):
        _jax_cpu.use_jax_numpy_on_cpu(path == "jax numpy")
        try:
            fn = lambda a: xent.cross_entropy(a, jax.numpy.asarray(t), label_smoothing=eps,
                                              reduction="none")
            grad = jax.grad(lambda a: fn(a).sum())(jax.numpy.asarray(x))
            return np.asarray(fn(jax.numpy.asarray(x))), np.asarray(grad)
        finally:
            _jax_cpu.use_jax_numpy_on_cpu(False)
    return xent.cross_entropy(x, t, label_smoothing=eps, reduction="none", return_grads=True)


def _torch_smoothed(x, t, eps):
    """torch's float64 ``F.cross_entropy`` loss and gradient of its sum, as NumPy arrays."""
    xt = torch.from_numpy(x.astype(np.float64)).requires_grad_(True)
    loss = F.cross_entropy(xt, torch.from_numpy(t), label_smoothing=eps, reduction="none")
    loss.sum().backward()
    return loss.detach().numpy(), xt.grad.numpy()


def test_label_smoothing_of_huge_or_shifted_logits_stays_finite_and_precise():
    """Rows of ±3e38 (4 classes, and 512 with an overflowing float32 partial sum) and
    of 2e38 and 0 give their float64 loss (torch's float32 gives +inf; xent
    gave -inf), and logits shifted by 1e4 stay within 1e-5 of torch's float64
    loss, on every path (NumPy, torch on the kernel and in torch ops, JAX
    through the callback and in jax.numpy). A row of 3e38 and three of -3e38
    (its smoothing term over 3.4e38 before it is scaled by ε) too: the
    jax.numpy and torch-ops paths gave +inf."""
    rng = np.random.default_rng(3)
    huge = np.array([[3e38, 3e38, -3e38, 0.0], [2e38, 2e38, 0.0, 0.0]], np.float32)
    wide = np.zeros((1, 512), np.float32)
    wide[0, :3] = 3e38, 3e38, -3e38
    spread = np.array([[3e38, -3e38, -3e38, -3e38]], np.float32)
    shifted = (rng.standard_normal((16, 1000)) + 1e4).astype(np.float32)
    cases = [(huge, np.array([1, 0])), (wide, np.array([1])), (spread, np.array([0])),
             (shifted, rng.integers(0, 1000, 16))]
    for x, t in cases:
        want = _torch_smoothed(x, t, 0.1)[0]
        for path in SMOOTHING_PATHS:
            got = _smoothed(path, x, t, 0.1)[0]
            # (SPEC allows a few ulps of 1e4 for the shifted rows; a float32 mean gave 1.9e-5)
            np.testing.assert_allclose(got, want, rtol=1e-5 if x is shifted else 1e-6,
                                       err_msg=path)


@pytest.mark.parametrize("eps", [0.1, 1.0])
def test_label_smoothing_of_a_minus_inf_target_logit_is_torchs(eps):
    """A target logit of -inf: loss +inf as torch's (NaN for ε = 1: its ``0·inf``),
    and torch's finite gradient, on every path; ``nll + ε·mean_j (z_y - z_j)``
    made it ``inf - inf``, NaN, on all of them. A -inf logit off the target
    gives +inf too (its ``-log p_j`` is)."""
    x = np.array([[0.0, -np.inf, 1.0, 2.0], [0.5, 1.0, -np.inf, 3.0], [0.5, 1.0, 2.0, 3.0]],
                 np.float32)
    t = np.array([1, 0, 2])
    want_loss, want_grad = _torch_smoothed(x, t, eps)
    assert np.isinf(want_loss[0]) == (eps < 1) and np.isnan(want_loss[0]) == (eps == 1)
    for path in SMOOTHING_PATHS:
        loss, grad = _smoothed(path, x, t, eps)
        np.testing.assert_allclose(loss, want_loss, rtol=1e-6, err_msg=path)
        np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-7, err_msg=path)


def test_label_smoothing_of_float64_rows_whose_sum_overflows():
    """float64 rows near 1.8e308, whose float64 row sum overflows: a row of 1.7e308,
    1.7e308 and 0 gave -inf (torch: 5.67e306); a target logit of -1.7e308
    among +1.7e308 gives +inf as torch does (nll overflows). NumPy and torch
    paths (JAX holds no float64 without jax_enable_x64)."""
    x = np.array([[1.7e308, 1.7e308, 0.0], [1.7e308, -1.7e308, 1.7e308]])
    t = np.array([0, 1])
    want = _torch_smoothed(x, t, 0.1)[0]
    assert np.isfinite(want[0]) and np.isposinf(want[1])
    for path in SMOOTHING_PATHS[:3]:
        np.testing.assert_allclose(_smoothed(path, x, t, 0.1)[0], want, rtol=1e-12, err_msg=path)


def test_softcaps_at_the_bounds_match_the_float64_oracle():
    """The smallest and largest softcaps accepted (`SOFTCAP_MIN`, `SOFTCAP_MAX`) give
    the float64 loss of ``c·tanh(z/c)`` in float32 on every path (a cap of
    1e39 gave NaN: 1/c was 0 and c inf in float32; one of 2^126 flushed every
    logit below 1 to 0 in XLA)."""
    from xent._large_vocab._options import SOFTCAP_MAX, SOFTCAP_MIN
    jnp = pytest.importorskip("jax.numpy")
    from xent import _jax_cpu
    from xent._torch import _math

    x = np.array([[0.0, 1.0, 2.0], [3.0, -1.0, 0.5]], np.float32)
    t = np.array([0, 2])
    for cap in (SOFTCAP_MIN, SOFTCAP_MAX):
        z = torch.from_numpy(x.astype(np.float64))
        want = F.cross_entropy(cap * torch.tanh(z / cap), torch.from_numpy(t),
                               reduction="none").numpy()
        got = {"numpy": xent.cross_entropy(x, t, softcap=cap, reduction="none")}
        for ops in (False, True):
            _math.use_torch_ops_on_cpu(ops)
            try:
                got[f"torch ops={ops}"] = xent.cross_entropy(
                    torch.from_numpy(x), torch.from_numpy(t), softcap=cap, reduction="none").numpy()
            finally:
                _math.use_torch_ops_on_cpu(False)
            _jax_cpu.use_jax_numpy_on_cpu(ops)
            try:
                got[f"jax numpy={ops}"] = np.asarray(xent.cross_entropy(
                    jnp.asarray(x), jnp.asarray(t), softcap=cap, reduction="none"))
            finally:
                _jax_cpu.use_jax_numpy_on_cpu(False)
        for path, value in got.items():
            np.testing.assert_allclose(value, want, rtol=1e-6, err_msg=f"{cap} {path}")

def test_a_z_loss_that_overflows_is_inf_as_torchs_without_a_numpy_warning():
    """``z·lse²`` past float32's range: +inf, as torch's float32 sum of the same terms,
    and the gradient torch gives (finite), with no RuntimeWarning reaching the caller."""
    x = np.array([[1e30, 0.0, 1.0], [0.5, 1.0, 2.0]], np.float32)
    t = np.array([1, 2])
    z = torch.tensor(x, requires_grad=True)
    lse = torch.logsumexp(z, -1)
    want = F.cross_entropy(z, torch.tensor(t), reduction="none") + 1e-4 * lse * lse
    want.sum().backward()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss = xent.cross_entropy(x, t, z_loss=1e-4, reduction="none")
        _, grad = xent.cross_entropy(x, t, z_loss=1e-4, reduction="sum", return_grads=True)
    assert np.isposinf(loss[0]) and np.isposinf(want[0].item())
    np.testing.assert_allclose(loss[1], want[1].item(), rtol=1e-6)
    np.testing.assert_allclose(grad, z.grad.numpy(), rtol=1e-5, atol=1e-7)


def test_a_half_precision_loss_past_its_range_is_inf_without_a_numpy_warning():
    """A float16 loss whose z-loss passes 65504 rounds to +inf, as torch's float16
    result of the same float64 loss does, with no RuntimeWarning from the cast."""
    x = np.array([[300.0, 0.0, 1.0], [0.5, 1.0, 2.0]], np.float16)
    t = np.array([1, 2])
    truth, _ = oracle(x.astype(np.float64), t, {"z_loss": 1.0}, "none")
    want = torch.tensor(truth).to(torch.float16).numpy()
    assert np.isposinf(want[0]) and np.isfinite(want[1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = xent.cross_entropy(x, t, z_loss=1.0, reduction="none")
        total = xent.cross_entropy(x, t, z_loss=1.0, reduction="sum")
    assert got.dtype == np.float16 and np.isposinf(got[0]) and np.isposinf(total)
    assert_close(got[1], want[1], np.float16)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_torch_ops_path_sums_a_half_weights_chunk_gradients_in_float32(dtype):
    """The torch-ops path (tensors on other devices) used the weight in every chunk,
    and autograd summed the chunks' bfloat16 gradients in bfloat16: up to 1957
    ulps off at 11 chunks (an independent review), where the kernels sum in
    float32. 32 chunks now come as close to the float64 truth as one chunk does
    (each chunk's own matmul still rounds its part once, as torch's does)."""
    from xent import _torch
    g = torch.Generator().manual_seed(17)
    x = torch.randn(512, 16, generator=g).to(dtype)
    w = (torch.randn(256, 16, generator=g) * 0.3).to(dtype)
    t = torch.randint(0, 256, (512,), generator=g)
    x64, w64 = x.double(), w.double().requires_grad_()
    torch.nn.functional.cross_entropy(x64 @ w64.t(), t, reduction="sum").backward()
    ulp = 2.0 ** (torch.floor(torch.log2(w64.grad.abs().clamp(min=1e-30)))
                  - (7 if dtype == torch.bfloat16 else 10))
    errors = {}
    _torch.use_torch_ops_on_cpu(True)
    try:
        for chunk in (16, 512):
            leaf = w.clone().requires_grad_()
            xent.linear_cross_entropy(x, leaf, t, reduction="sum", chunk_size=chunk).backward()
            error = (leaf.grad.double() - w64.grad).abs()
            errors[chunk] = ((error / ulp).mean().item(), error.max().item())
    finally:
        _torch.use_torch_ops_on_cpu(False)
    assert errors[16][0] <= 1.5 * errors[512][0] and errors[16][1] <= 2 * errors[512][1], errors
