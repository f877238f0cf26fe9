"""A small next-token model trains with xent.linear_cross_entropy as with PyTorch.

An embedding and an LM head (V = 4096) learn a token sequence the test builds;
the same loop runs twice from the same weights, once with
``F.cross_entropy(x @ W.T, y)`` on the full logits and once with
``xent.linear_cross_entropy`` (chunks of 48 tokens, so a step's 192 tokens
take four chunks). The losses and weights must agree step for step.
"""
import numpy as np
import pytest

import xent

torch = pytest.importorskip("torch")
F = torch.nn.functional

VOCAB, HIDDEN, TOKENS, STEPS = 4096, 32, 192, 300


def sequence(length, seed=0):
    """Tokens where each one mostly follows from the one before (a learnable bigram map)."""
    rng = np.random.default_rng(seed)
    successor = rng.permutation(VOCAB)
    tokens = [int(rng.integers(VOCAB))]
    for _ in range(length - 1):
        tokens.append(int(successor[tokens[-1]]) if rng.random() < 0.9 else int(rng.integers(VOCAB)))
    return torch.tensor(tokens)


def train(loss_fn, data, steps=STEPS):
    """SGD with momentum on (embedding, head); returns each step's loss and the last weights."""
    torch.manual_seed(0)
    embed = torch.nn.Embedding(VOCAB, HIDDEN)
    head = torch.nn.Linear(HIDDEN, VOCAB, bias=False)
    params = list(embed.parameters()) + list(head.parameters())
    opt = torch.optim.SGD(params, lr=0.5, momentum=0.9)
    losses = []
    for step in range(steps):
        start = (step * TOKENS) % (data.numel() - TOKENS - 1)
        inputs, targets = data[start:start + TOKENS], data[start + 1:start + TOKENS + 1].clone()
        targets[::17] = -100          # some tokens ignored, as padding would be
        loss = loss_fn(torch.tanh(embed(inputs)), head.weight, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return np.array(losses), [p.detach().clone() for p in params]


def test_linear_cross_entropy_trains_step_for_step_like_full_logits():
    data = sequence(STEPS * TOKENS // 4 + TOKENS + 2)
    torch_losses, torch_params = train(lambda h, w, y: F.cross_entropy(h @ w.T, y), data)
    xent_losses, xent_params = train(
        lambda h, w, y: xent.linear_cross_entropy(h, w, y, chunk_size=48), data)
    assert torch_losses[-20:].mean() < 0.6 * torch_losses[:20].mean()    # it learned
    np.testing.assert_allclose(xent_losses, torch_losses, rtol=1e-5)
    for a, b in zip(xent_params, torch_params):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
