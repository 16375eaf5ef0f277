"""prunekit.perplexity: windows, stride, the seeded subset, and the number itself."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from prunekit.perplexity import compare, perplexity, windows


class Uniform(nn.Module):
    """Predicts every token with probability 1 / vocab: its perplexity is exactly vocab."""

    def __init__(self, vocab=50):
        super().__init__()
        self.vocab, self.p = vocab, nn.Parameter(torch.zeros(()))

    def forward(self, ids):
        return torch.zeros(*ids.shape, self.vocab) + self.p


class Bigram(nn.Module):
    def __init__(self, vocab=32, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.table = nn.Embedding(vocab, vocab)

    def forward(self, ids):
        return self.table(ids)


def test_a_uniform_model_has_the_vocabulary_size_as_perplexity():
    result = perplexity(Uniform(50), torch.randint(0, 50, (300,)), window=64)
    assert result.ppl == pytest.approx(50.0, rel=1e-5) and result.windows == 4 and result.tokens == 4 * 63


def test_disjoint_windows_match_the_cross_entropy_computed_by_hand():
    model = Bigram()
    tokens = torch.randint(0, 32, (130,), generator=torch.Generator().manual_seed(1))
    result = perplexity(model, tokens, window=32)
    nll = 0.0
    for b in range(0, 130 - 32 + 1, 32):
        ids = tokens[b:b + 32]
        nll += float(nn.functional.cross_entropy(model(ids[None])[0, :-1], ids[1:], reduction="sum"))
    assert result.nll == pytest.approx(nll / result.tokens, rel=1e-6) and result.ppl == pytest.approx(math.exp(result.nll))


@given(n=st.integers(10, 400), window=st.integers(2, 64), frac=st.floats(0.05, 1.0))
def test_every_token_after_the_first_window_is_scored_once(n, window, frac):
    stride = max(1, int(window * frac))
    if n < window:
        with pytest.raises(ValueError, match=f"shorter than one window={window}"):
            windows(n, window, stride)
        return
    spans = windows(n, window, stride)
    assert spans[0] == (0, window, window - 1)
    scored = set()
    for begin, end, k in spans:
        targets = set(range(end - k, end))
        assert targets <= set(range(begin + 1, end)) and not (targets & scored)  # context inside, never twice
        scored |= targets
    if stride < window:
        assert scored == set(range(1, spans[-1][1]))


def test_the_seeded_subset_is_the_same_for_every_model_and_the_model_is_left_alone():
    tokens = torch.randint(0, 32, (2000,), generator=torch.Generator().manual_seed(2))
    a, b = Bigram(seed=0).train(), Bigram(seed=1).eval()
    results = compare({"a": a, "b": b}, tokens, window=50, max_windows=5, seed=3)
    assert results["a"].windows == results["b"].windows == 5 and results["a"].tokens == results["b"].tokens
    assert windows(2000, 50, 50, 5, seed=3) == windows(2000, 50, 50, 5, seed=3) != windows(2000, 50, 50, 5, seed=4)
    assert a.training and not b.training
    assert "perplexity" in str(results["a"])


def test_a_hugging_face_causal_lm_gives_its_own_loss():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    tokens = torch.randint(0, 64, (96,))
    result = perplexity(model, tokens, window=48)
    with torch.no_grad():
        losses = [float(model.eval()(input_ids=tokens[b:b + 48][None], labels=tokens[b:b + 48][None]).loss)
                  for b in (0, 48)]
    assert result.nll == pytest.approx(sum(losses) / 2, rel=1e-4)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="1-D tensor of token ids"):
        perplexity(Uniform(), torch.randn(100), window=10)
    with pytest.raises(ValueError, match="stride=20 is longer than window=10"):
        perplexity(Uniform(), torch.randint(0, 50, (100,)), window=10, stride=20)
    with pytest.raises(ValueError, match="the text has 5 tokens"):
        perplexity(Uniform(), torch.randint(0, 50, (5,)), window=10)
    with pytest.raises(ValueError, match="logits of shape"):
        perplexity(nn.Linear(1, 1), torch.randint(0, 50, (20,)), window=10)
