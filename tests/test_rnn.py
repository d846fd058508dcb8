"""Unit tests of common.rnn: model wrappers, gradient clipping, prediction, the training loop."""

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from common import rnn, text

V, H = 6, 8


pytestmark = pytest.mark.usefixtures("one_thread")


def _scratch_model(seed=0):
    def get_params(vocab_size, num_hiddens, device):
        g = torch.Generator().manual_seed(seed)
        shapes = [
            (vocab_size, num_hiddens),
            (num_hiddens, num_hiddens),
            (num_hiddens,),
            (num_hiddens, vocab_size),
            (vocab_size,),
        ]
        return [(torch.randn(s, generator=g) * 0.3).requires_grad_(True) for s in shapes]

    def init_state(batch_size, num_hiddens, device):
        return (torch.zeros(batch_size, num_hiddens, device=device),)

    def forward(inputs, state, params):
        W_xh, W_hh, b_h, W_hq, b_q = params
        (Hs,) = state
        outs = []
        for X in inputs:
            Hs = torch.tanh(X @ W_xh + Hs @ W_hh + b_h)
            outs.append(Hs @ W_hq + b_q)
        return torch.stack(outs), (Hs,)

    return rnn.RNNModelScratch(V, H, "cpu", get_params, init_state, forward)


def test_scratch_model_equals_nn_rnn_with_same_weights():
    scratch = _scratch_model()
    W_xh, W_hh, b_h, W_hq, b_q = scratch.params
    layer = nn.RNN(V, H)
    model = rnn.RNNModel(layer, V)
    with torch.no_grad():
        layer.weight_ih_l0.copy_(W_xh.T), layer.weight_hh_l0.copy_(W_hh.T)
        layer.bias_ih_l0.copy_(b_h), layer.bias_hh_l0.zero_()
        model.linear.weight.copy_(W_hq.T), model.linear.bias.copy_(b_q)
    X = torch.randint(V, (3, 7))
    Y1, (H1,) = scratch(X, scratch.begin_state(3, "cpu"))
    Y2, H2 = model(X, model.begin_state(3, "cpu"))
    assert Y1.shape == (7, 3, V)
    torch.testing.assert_close(Y1, Y2)
    torch.testing.assert_close(H1, H2[0])


@pytest.mark.parametrize(
    "cls,bidirectional,layers", [(nn.GRU, False, 2), (nn.LSTM, True, 1), (nn.RNN, True, 2)]
)
def test_rnn_model_state_shapes(cls, bidirectional, layers):
    model = rnn.RNNModel(cls(V, H, layers, bidirectional=bidirectional), V)
    state = model.begin_state(4, "cpu")
    dirs = 2 if bidirectional else 1
    first = state[0] if isinstance(state, tuple) else state
    assert isinstance(state, tuple) == (cls is nn.LSTM)
    assert first.shape == (dirs * layers, 4, H)
    Y, _ = model(torch.randint(V, (4, 5)), state)
    assert Y.shape == (5, 4, V)


def test_rnn_model_rejects_bad_layers_and_inputs():
    with pytest.raises(ValueError, match="input_size"):
        rnn.RNNModel(nn.RNN(V + 1, H), V)
    with pytest.raises(ValueError, match="time-first"):
        rnn.RNNModel(nn.RNN(V, H, batch_first=True), V)
    model = rnn.RNNModel(nn.RNN(V, H), V)
    with pytest.raises(ValueError, match=r"\(batch_size, num_steps\)"):
        model(torch.randint(V, (5,)), model.begin_state(1, "cpu"))
    with pytest.raises(ValueError, match="integer"):
        model(torch.rand(2, 3), model.begin_state(2, "cpu"))
    with pytest.raises(ValueError, match="positive"):
        rnn.RNNModelScratch(0, 4, "cpu", None, None, None)


def test_grad_clipping_matches_torch_and_keeps_small_gradients():
    params = [torch.zeros(3, requires_grad=True), torch.zeros(2, 2, requires_grad=True)]
    copies = [torch.zeros_like(p, requires_grad=True) for p in params]
    grads = [torch.tensor([3.0, 0.0, 4.0]), torch.full((2, 2), 6.0)]
    for p, c, g in zip(params, copies, grads):
        p.grad, c.grad = g.clone(), g.clone()
    norm = rnn.grad_clipping(params, 1.0)
    torch.nn.utils.clip_grad_norm_(copies, 1.0)
    assert math.isclose(norm.item(), math.sqrt(9 + 16 + 4 * 36), rel_tol=1e-6)
    for p, c in zip(params, copies):
        torch.testing.assert_close(p.grad, c.grad)
    small = [torch.zeros(2, requires_grad=True)]
    small[0].grad = torch.tensor([0.1, 0.2])
    rnn.grad_clipping(small, 1.0)
    torch.testing.assert_close(small[0].grad, torch.tensor([0.1, 0.2]))


def test_grad_clipping_bad_input():
    p = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match="backward"):
        rnn.grad_clipping([p], 1.0)
    p.grad = torch.ones(2)
    with pytest.raises(ValueError, match="positive"):
        rnn.grad_clipping([p], 0)
    with pytest.raises(TypeError, match="iterable of tensors"):
        rnn.grad_clipping([1.0, 2.0], 1.0)


def test_parameters_of_module_scratch_and_list():
    module = nn.Linear(2, 3)
    assert len(rnn.parameters_of(module)) == 2
    assert len(rnn.parameters_of(_scratch_model())) == 5


def test_predict_warm_up_and_length():
    vocab = text.Vocab(list("abcde"))
    model = _scratch_model()
    out = rnn.predict("abc", 7, model, vocab, torch.device("cpu"))
    assert out.startswith("abc") and len(out) - 4 * out.count("<unk>") == 10  # "<unk>" is 5 chars
    assert rnn.predict("abc", 7, model, vocab) == out  # deterministic, device inferred
    with pytest.raises(ValueError, match="prefix"):
        rnn.predict("", 3, model, vocab)
    with pytest.raises(ValueError, match="num_preds"):
        rnn.predict("a", -1, model, vocab)


def test_predict_matches_manual_greedy_loop():
    vocab = text.Vocab(list("abcde"))
    model = rnn.RNNModel(nn.GRU(V, H), V)
    prefix = "ab"
    with torch.no_grad():
        state = model.begin_state(1, "cpu")
        y, state = model(torch.tensor([vocab[list(prefix)]]), state)  # whole prefix at once
        nxt = int(y[-1].argmax())
    assert rnn.predict(prefix, 1, model, vocab) == prefix + vocab.to_tokens(nxt)


def test_train_lm_learns_a_periodic_sequence():
    torch.manual_seed(0)
    vocab = text.Vocab(list("abcde"))
    corpus = vocab[list("abcde" * 80)]
    loader = text.SeqDataLoader(corpus, vocab, batch_size=4, num_steps=10)
    model = rnn.RNNModel(nn.GRU(V, 16), V)
    history = rnn.train_lm(
        model,
        loader,
        vocab,
        10,
        torch.optim.Adam(model.parameters(), lr=0.05),
        torch.device("cpu"),
        plot=False,
        progress=False,
        prefix="ab",
    )
    assert len(history.perplexity) == len(history.tokens_per_sec) == 10
    assert history.perplexity[-1] < 1.5 < history.perplexity[0]
    assert rnn.predict("abc", 5, model, vocab).startswith("abcdeab")
    assert "perplexity" in str(history)


def test_train_lm_random_iter_and_scratch_model():
    torch.manual_seed(0)
    vocab = text.Vocab(list("abcde"))
    loader = text.SeqDataLoader(vocab[list("abcde" * 40)], vocab, 2, 5, use_random_iter=True)
    model = _scratch_model()
    history = rnn.train_lm(
        model,
        loader,
        vocab,
        2,
        torch.optim.SGD(model.params, lr=0.5),
        plot=False,
        progress=False,
        prefix="",
    )
    assert all(math.isfinite(p) for p in history.perplexity)
    with pytest.raises(ValueError, match="num_epochs"):
        rnn.train_lm(model, loader, vocab, 0, torch.optim.SGD(model.params, lr=0.5))


def test_train_epoch_perplexity_is_exp_of_mean_loss():
    torch.manual_seed(0)
    vocab = text.Vocab(list("abcde"))
    loader = text.SeqDataLoader(vocab[list("abcdeedcba" * 10)], vocab, 2, 5)
    model = rnn.RNNModel(nn.RNN(V, H), V)

    class NoStep:  # measure the loss without changing the model
        def zero_grad(self):
            pass

        def step(self):
            pass

    torch.manual_seed(3)
    ppl, _ = rnn.train_epoch_lm(model, loader, nn.CrossEntropyLoss(), NoStep(), torch.device("cpu"))
    torch.manual_seed(3)
    losses, state = [], None
    with torch.no_grad():
        for X, Y in loader:
            state = model.begin_state(2, "cpu") if state is None else state
            y, state = model(X, state)
            losses.append(F.cross_entropy(y.reshape(-1, V), Y.T.reshape(-1)))
    assert math.isclose(ppl, math.exp(torch.stack(losses).mean().item()), rel_tol=1e-5)


def test_detach_state():
    a = torch.ones(2, requires_grad=True) * 2
    assert not rnn.detach_state(a).requires_grad
    assert all(not s.requires_grad for s in rnn.detach_state((a, a)))
