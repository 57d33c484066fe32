"""Perplexity against a brute-force per-token computation."""

import math

import pytest
import torch

from workbench.core.evaluate import evaluate_perplexity, perplexity
from workbench.core.models import forward_logits


def brute_force_perplexity(model, blocks):
    """exp(mean over every predicted token of -log p(token | prefix)), one token at a time."""
    nlls = []
    with torch.no_grad():
        for block in blocks:
            for t in range(1, block.shape[0]):
                logits = forward_logits(model, block[:t].unsqueeze(0))[0, -1].double()
                nlls.append(-torch.log_softmax(logits, -1)[block[t]].item())
    return math.exp(sum(nlls) / len(nlls))


def test_perplexity_equals_brute_force(tiny_llama):
    model, _ = tiny_llama
    blocks = torch.randint(0, 256, (3, 12), generator=torch.Generator().manual_seed(0))
    expected = brute_force_perplexity(model, blocks)
    for bs in (1, 2, 3):
        assert perplexity(model, blocks, batch_size=bs, progress=False) == pytest.approx(
            expected, rel=1e-5
        )


def test_result_fields(tiny_llama):
    model, _ = tiny_llama
    blocks = torch.randint(0, 256, (4, 9))
    res = evaluate_perplexity(model, blocks, batch_size=3, progress=False)
    assert res.n_tokens == 4 * 8
    assert res.perplexity == pytest.approx(math.exp(res.nll))
    assert res.tokens_per_s > 0


def test_bad_tokens(tiny_llama):
    model, _ = tiny_llama
    with pytest.raises(ValueError, match="tokens must have seq_len >= 2"):
        perplexity(model, torch.zeros(3, 1, dtype=torch.long))
    with pytest.raises(TypeError, match="tokens must hold integer token ids.*float32"):
        perplexity(model, torch.zeros(3, 4))
    with pytest.raises(ValueError, match="tokens holds token id 260.*260 ids"):
        perplexity(model, torch.full((3, 4), 260))
    with pytest.raises(ValueError, match="tokens has sequence length 257.*256 positions"):
        perplexity(model, torch.zeros(1, 257, dtype=torch.long))
    with pytest.raises(ValueError, match="batch_size must be in"):
        perplexity(model, torch.zeros(3, 4, dtype=torch.long), batch_size=0)


def test_int32_tokens_give_the_int64_result(tiny_llama):
    model, _ = tiny_llama
    blocks = torch.randint(0, 256, (2, 8), generator=torch.Generator().manual_seed(1))
    assert perplexity(model, blocks.int(), progress=False) == perplexity(model, blocks,
                                                                         progress=False)


@pytest.mark.slow
def test_default_model_validation_perplexity_is_sane(smollm2):
    """Real SmolLM2-135M on the wiki-excerpt validation split.

    Measured on this setup (CPU, float32): 4 blocks x 128 tokens -> about 20;
    the README records the full-size number (16 x 256).
    """
    from workbench.core.data import load_corpus, token_blocks

    model, tok = smollm2
    corpus = load_corpus("wiki-excerpt")
    blocks = token_blocks(tok, corpus.validation, 128, n_blocks=4, seed=0)
    ppl = perplexity(model, blocks, batch_size=4, progress=False)
    assert 5 < ppl < 60, ppl


# ----------------------------------------------------------------------------- by card
def test_perplexity_by_card_equals_a_brute_force_loop(tiny_llama, tmp_path, one_thread):
    from tests.core.test_protocols import write_wikitext
    from workbench.core import protocols
    from workbench.core.evaluate import evaluate_card
    from workbench.core.models import forward_logits

    model, tok = tiny_llama
    rows = [" = Valkyria = ", "", "Senjo no Valkyria is a game.", "It was released in 2011."]
    write_wikitext(tmp_path, rows * 6)
    out = evaluate_card(model, tok, "wikitext2", 32, data=tmp_path, batch_size=3,
                        progress=False)
    w = out.windows.tokens
    total, count, per_window = 0.0, 0, []
    with torch.no_grad():
        for k in range(w.shape[0]):
            logp = torch.log_softmax(forward_logits(model, w[k: k + 1])[0].double(), -1)
            nll = [-float(logp[i, w[k, i + 1]]) for i in range(31)]
            total, count = total + sum(nll), count + 31
            per_window.append(sum(nll) / 31)
    assert out.result.n_tokens == count == w.shape[0] * 31
    assert out.result.nll == pytest.approx(total / count, rel=1e-6)
    # the authors' formula: exp(sum_w mean_w * seq_len / (n * seq_len))
    wanda = math.exp(sum(m * 32 for m in per_window) / (len(per_window) * 32))
    assert out.result.perplexity == pytest.approx(wanda, rel=1e-6)
    rec = out.record()
    assert rec["eval_card"] == "wikitext2" and rec["eval_seq_len"] == 32
    assert rec["eval_ppl_level"] == "token"
    assert rec["eval_fingerprint"] == str(protocols.fingerprint(w))


