"""Training with xent's loss ends where training with the framework's own loss does.

A softmax regression on a fixed synthetic dataset, trained by full-batch
gradient descent for a few hundred steps, once with an xent loss and once with
`torch.nn.functional.cross_entropy` / `optax.softmax_cross_entropy_with_integer_labels`.
Same data, same initial parameters, same optimiser: the final loss and
parameters must agree to float32 tolerance, so xent's gradients train exactly
like the framework's.
"""
import numpy as np
import pytest

import xent

N, FEATURES, CLASSES, STEPS, LR = 512, 16, 10, 300, 0.5


@pytest.fixture(scope="module")
def dataset():
    """Inputs, labels from a noisy linear teacher, and a small random initial model."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((N, FEATURES)).astype(np.float32)
    teacher = rng.standard_normal((FEATURES, CLASSES))
    labels = np.argmax(x @ teacher + rng.gumbel(size=(N, CLASSES)), axis=1)
    w0 = (0.01 * rng.standard_normal((FEATURES, CLASSES))).astype(np.float32)
    return x, labels, w0, np.zeros(CLASSES, np.float32)


def _xent_losses():
    """xent faces that reduce to the mean cross-entropy, as ``fn(labels, logits)``."""
    keras = xent.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    return {
        "nn": lambda y, z: xent.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=z).mean(),
        "losses_v1": lambda y, z: xent.losses.sparse_softmax_cross_entropy(y, z, loss_collection=None),
        "keras": lambda y, z: keras(y, z),
    }


def _assert_same_end(got, want):
    (loss, w, b), (ref_loss, ref_w, ref_b) = got, want
    assert ref_loss < 0.6 * np.log(CLASSES), "the reference did not train"
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    np.testing.assert_allclose(w, ref_w, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(b, ref_b, rtol=1e-4, atol=1e-5)


@pytest.fixture
def torch_one_thread():
    """torch on one thread: the model is tiny, and on a busy 2-core machine two
    spinning OpenMP threads make each step wait for a core."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(threads)


@pytest.mark.parametrize("face", list(_xent_losses()))
def test_torch_training_ends_where_cross_entropy_does(dataset, face, torch_one_thread):
    torch = torch_one_thread
    x, labels, w0, b0 = dataset

    def train(loss_fn):
        w = torch.tensor(w0, requires_grad=True)
        b = torch.tensor(b0, requires_grad=True)
        opt = torch.optim.SGD([w, b], lr=LR)
        inputs, targets = torch.tensor(x), torch.tensor(labels)
        for _ in range(STEPS):
            opt.zero_grad()
            loss = loss_fn(targets, inputs @ w + b)
            loss.backward()
            opt.step()
        with torch.no_grad():
            final = torch.nn.functional.cross_entropy(inputs @ w + b, targets)
        return final.item(), w.detach().numpy(), b.detach().numpy()

    reference = train(lambda y, z: torch.nn.functional.cross_entropy(z, y))
    _assert_same_end(train(_xent_losses()[face]), reference)


@pytest.mark.parametrize("face", list(_xent_losses()))
def test_jax_training_ends_where_optax_does(dataset, face):
    jax = pytest.importorskip("jax")
    optax = pytest.importorskip("optax")
    jnp = jax.numpy
    x, labels, w0, b0 = dataset
    inputs, targets = jnp.asarray(x), jnp.asarray(labels)

    def train(loss_fn):
        opt = optax.sgd(LR)

        def step(carry, _):
            params, state = carry
            grads = jax.grad(lambda p: loss_fn(targets, inputs @ p[0] + p[1]))(params)
            updates, state = opt.update(grads, state)
            return (optax.apply_updates(params, updates), state), None

        params = (jnp.asarray(w0), jnp.asarray(b0))
        (params, _), _ = jax.jit(lambda c: jax.lax.scan(step, c, None, length=STEPS))((params, opt.init(params)))
        logits = inputs @ params[0] + params[1]
        final = optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
        return float(final), np.asarray(params[0]), np.asarray(params[1])

    reference = train(lambda y, z: optax.softmax_cross_entropy_with_integer_labels(z, y).mean())
    _assert_same_end(train(_xent_losses()[face]), reference)
