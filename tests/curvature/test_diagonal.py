"""Diagonal Fisher vs dense matrices and brute-force loops."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from workbench.curvature import dense_matrix, diagonal_fisher
from workbench.core.models import load_model

from . import cases


def rel(a, b):
    return float((a - b).norm() / b.norm())


def flat(d):
    return torch.cat([t.reshape(-1) for t in d.values()])


@pytest.mark.parametrize("sizes", [(8,), (3, 5)])
def test_empirical_diagonal_is_diag_of_dense_ef(sizes):
    model = cases.mlp(0)
    X, y = cases.classification_data(1, 8)
    batches = cases.split(X, y, sizes)
    EF = dense_matrix("empirical_fisher", model, batches)
    d = diagonal_fisher(model, batches, chunk_size=3)
    assert rel(flat(d).double(), EF.diagonal()) < 1e-6  # float32 accumulation
    # the squared *batch* gradient is a different (wrong) quantity
    g = torch.autograd.grad(nn.CrossEntropyLoss()(model(X), y), list(model.parameters()))
    assert rel(torch.cat([t.reshape(-1) for t in g]).pow(2), EF.diagonal()) > 0.1


def test_true_diagonal_is_unbiased_for_fisher_diagonal():
    model = cases.mlp(1)
    X, y = cases.classification_data(2, 6)
    F = dense_matrix("true_fisher", model, [(X, y)]).diagonal()
    d1 = flat(diagonal_fisher(model, [(X, y)], fisher_type="true", n_samples=1, seed=0)).double()
    dS = flat(diagonal_fisher(model, [(X, y)], fisher_type="true", n_samples=1000, seed=0)).double()
    assert rel(dS, F) < 0.08
    assert rel(dS, F) < rel(d1, F) / 4


def test_loop_and_vmap_agree_and_chunk_invariance():
    model = cases.transformer(0)
    X, y = cases.sequence_data(3, 5)
    ref = diagonal_fisher(model, [(X, y)], backend="loop", chunk_size=None)
    for cs in (1, 2, None):
        for fisher_type in ("empirical", "true"):
            a = diagonal_fisher(model, [(X, y)], fisher_type=fisher_type, chunk_size=cs, seed=4)
            b = diagonal_fisher(model, [(X, y)], fisher_type=fisher_type, chunk_size=5, seed=4)
            assert rel(flat(a), flat(b)) < 1e-6, (fisher_type, cs)
        assert rel(flat(diagonal_fisher(model, [(X, y)], chunk_size=cs)), flat(ref)) < 1e-6


def test_lm_token_normalisation_padding_and_sequence_sum():
    """Empirical LM diagonal = squared per-*sequence* gradients / active tokens."""
    model, _ = load_model("tiny-llama", device="cpu", dtype="float64")
    ids = torch.randint(0, 256, (3, 6), generator=torch.Generator().manual_seed(0))
    params = ["lm_head.weight", "model.layers.0.self_attn.q_proj.weight"]
    mask = torch.ones_like(ids)
    mask[2, 3:] = 0
    d = diagonal_fisher(model, [{"input_ids": ids, "attention_mask": mask}], params=params,
                        chunk_size=2)
    named = dict(model.named_parameters())
    ref = {n: torch.zeros_like(named[n]) for n in params}
    for i in range(3):
        T = int(mask[i].sum())
        x = ids[i:i + 1, :T]
        logits = model(x, use_cache=False).logits[0, :-1]
        loss = nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum")
        gs = torch.autograd.grad(loss, [named[n] for n in params])
        for n, g in zip(params, gs):
            ref[n] += g.pow(2)
    n_tokens = 5 + 5 + 2
    for n in params:
        assert rel(d[n].double(), ref[n] / n_tokens) < 1e-5
    # normalisations
    e = diagonal_fisher(model, [{"input_ids": ids, "attention_mask": mask}], params=params,
                        normalize="example")
    assert rel(e[params[0]], d[params[0]] * n_tokens / 3) < 1e-6


def test_half_precision_model_accumulates_float32_and_storage_options():
    model, _ = load_model("tiny-llama", device="cpu", dtype="bfloat16")
    ids = torch.randint(0, 256, (2, 8), generator=torch.Generator().manual_seed(1))
    p = ["lm_head.weight"]
    d = diagonal_fisher(model, [ids], params=p)
    assert d[p[0]].dtype == torch.float32 and torch.isfinite(d[p[0]]).all()
    assert d[p[0]].sum() > 0
    h = diagonal_fisher(model, [ids], params=p, storage_dtype=torch.float16, device="cpu")
    assert h[p[0]].dtype == torch.float16
    assert rel(h[p[0]].float(), d[p[0]]) < 1e-2


def test_clipping_bounds_each_per_example_gradient():
    model = cases.mlp(0)
    X, y = cases.classification_data(1, 6)
    d = diagonal_fisher(model, [(X, y)], clip=1e-3, normalize="none")
    # sum over entries of the squared clipped gradients <= n * clip^2
    assert float(flat(d).sum()) <= 6 * 1e-6 * (1 + 1e-5)
    big = diagonal_fisher(model, [(X, y)], clip=1e6, normalize="none")
    assert rel(flat(big), flat(diagonal_fisher(model, [(X, y)], normalize="none"))) < 1e-7


def test_bad_inputs():
    model = cases.mlp(0)
    X, y = cases.classification_data(1, 4)
    with pytest.raises(ValueError, match="fisher_type must be one of"):
        diagonal_fisher(model, [(X, y)], fisher_type="exact")
    with pytest.raises(ValueError, match="normalize"):
        diagonal_fisher(model, [(X, y)], normalize="batch")
    with pytest.raises(ValueError, match="empty"):
        diagonal_fisher(model, [])
    with pytest.raises(ValueError, match="loss_fn"):
        diagonal_fisher(model, [(X, y)], loss_fn=nn.HuberLoss())
    with pytest.raises(ValueError, match="mismatched shapes"):
        diagonal_fisher(model, [(X, y[:2])], backend="loop")
    with pytest.raises(ValueError, match="clip"):
        diagonal_fisher(model, [(X, y)], clip=0.0)
    Xn = X.clone()
    Xn[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        diagonal_fisher(model, [(Xn, y)])


def test_renamed_keywords_fail_naming_the_new_ones():
    model, data = cases.mlp(0), [cases.classification_data(1, 4)]
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'kind' \('kind' is now "
                                        r"'fisher_type'\)"):
        diagonal_fisher(model, data, kind="true")
    with pytest.raises(TypeError, match=r"'method' is now 'backend'"):
        diagonal_fisher(model, data, method="loop")
    assert diagonal_fisher.__renamed_keywords__ == {"kind": "fisher_type", "method": "backend"}
    # the new names work
    torch.testing.assert_close(flat(diagonal_fisher(model, data, fisher_type="true",
                                                    backend="loop", seed=2)),
                               flat(diagonal_fisher(model, data, fisher_type="true", seed=2)))


@pytest.mark.parametrize("fisher_type", ["empirical", "true"])
def test_hook_vmap_and_loop_paths_agree(fisher_type):
    """nn.Linear parameters go through hooks (2-D and 3-D inputs), the rest through vmap."""
    for model, (X, y) in ((cases.mlp(2), cases.classification_data(3, 7)),
                          (cases.transformer(1), cases.sequence_data(4, 3))):
        ref = diagonal_fisher(model, [(X, y)], fisher_type=fisher_type, backend="loop", seed=1)
        for backend in ("auto", "vmap"):
            got = diagonal_fisher(model, [(X, y)], fisher_type=fisher_type, backend=backend,
                                  seed=1, chunk_size=2)
            assert rel(flat(got), flat(ref)) < 1e-6, backend
        # every parameter of both models (nn.Embedding included) is hookable
        hooks = diagonal_fisher(model, [(X, y)], fisher_type=fisher_type, backend="hooks", seed=1)
        assert rel(flat(hooks), flat(ref)) < 1e-6
    hooks = diagonal_fisher(cases.mlp(2), [cases.classification_data(3, 7)], backend="hooks")
    assert set(hooks) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    with pytest.raises(ValueError, match="backend='hooks'"):  # nn.Conv2d is not hookable
        diagonal_fisher(cases.cnn(0), [cases.classification_data(2, 3, shape=(1, 5, 5))],
                        backend="hooks")
    with pytest.raises(ValueError, match="backend must be one of"):
        diagonal_fisher(cases.mlp(2), [cases.classification_data(3, 7)], backend="backpack")


F64 = {"storage_dtype": torch.float64}  # float64 models accumulate in float64


# --- hook path on a Llama with tied embedding / LM head: both granularities ----------

def tied_llama(seed=0):
    """Tiny Llama (2 layers, GQA, RMSNorm) whose LM head is the embedding matrix, with a
    ``padding_idx`` (the embedding row of token 0 gets no gradient from the input side)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=13, hidden_size=8, intermediate_size=12, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=2,
                      max_position_embeddings=16, tie_word_embeddings=True, pad_token_id=0)
    model = LlamaForCausalLM(cfg).double().eval()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    with torch.no_grad():  # non-trivial norm weights
        for m in model.modules():
            if type(m).__name__.endswith("RMSNorm"):
                m.weight.uniform_(0.5, 1.5)
    return model


def lm_batch(b=3, T=6, vocab=13, seed=0):
    ids = torch.randint(0, vocab, (b, T), generator=torch.Generator().manual_seed(seed))
    ids[0, 2] = 0  # the padding_idx token as an ordinary input
    mask = torch.ones_like(ids)
    mask[-1, T // 2:] = 0  # right padding of the last sequence
    return ids, mask


def position_grads(model, ids, mask):
    """Brute force: ``{name: [b, T, *shape]}``, the gradient of the summed masked token
    loss w.r.t. a copy of each parameter used only at (example i, position p).

    Each module is re-implemented with ``theta + D[i, p]`` (``D = 0``); a tied weight
    gets one ``D`` for both of its uses.
    """
    b, T = ids.shape
    named = dict(model.named_parameters())
    by_id = {id(p): n for n, p in named.items()}
    D = {n: torch.zeros(b, T, *p.shape, dtype=p.dtype, requires_grad=True)
         for n, p in named.items()}
    I, Pp = torch.arange(b)[:, None], torch.arange(T)[None]
    for m in model.modules():
        if isinstance(m, nn.Linear):
            assert m.bias is None
            d = D[by_id[id(m.weight)]]
            m.forward = lambda x, m=m, d=d: torch.einsum("bti,btoi->bto", x, m.weight + d)
        elif isinstance(m, nn.Embedding):
            d = D[by_id[id(m.weight)]]

            def emb(x, m=m, d=d):
                keep = (x != m.padding_idx).unsqueeze(-1).to(d.dtype)
                return nn.functional.embedding(x, m.weight, m.padding_idx) + keep * d[I, Pp, x]
            m.forward = emb
        elif type(m).__name__.endswith("RMSNorm"):
            d = D[by_id[id(m.weight)]]

            def norm(x, m=m, d=d):  # LlamaRMSNorm normalises in float32, like HF
                xf = x.float()
                xhat = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + m.variance_epsilon)
                return (m.weight + d) * xhat.to(x.dtype)
            m.forward = norm
    logits = model(ids, attention_mask=mask, use_cache=False).logits[:, :-1]
    act = mask[:, 1:].bool()
    loss = nn.functional.cross_entropy(logits[act], ids[:, 1:][act], reduction="sum")
    gs = torch.autograd.grad(loss, list(D.values()))
    for m in model.modules():
        m.__dict__.pop("forward", None)
    return dict(zip(D, gs)), int(act.sum())


def test_tied_llama_hooks_match_position_brute_force_both_granularities():
    model = tied_llama()
    ids, mask = lm_batch()
    G, N = position_grads(tied_llama(), ids, mask)
    batch = [{"input_ids": ids, "attention_mask": mask}]
    tok = diagonal_fisher(model, batch, granularity="token", backend="hooks", chunk_size=2,
                          storage_dtype=torch.float64)
    seq = diagonal_fisher(model, batch, granularity="sequence", backend="hooks",
                          chunk_size=2, storage_dtype=torch.float64)
    loop = diagonal_fisher(model, batch, backend="loop", storage_dtype=torch.float64)
    names = [n for n, _ in model.named_parameters()]
    assert set(tok) == set(seq) == set(names) and "lm_head.weight" not in names  # tied
    for n in names:
        ref_tok = G[n].pow(2).sum((0, 1)) / N
        ref_seq = G[n].sum(1).pow(2).sum(0) / N
        assert rel(tok[n], ref_tok) < 1e-10, n
        assert rel(seq[n], ref_seq) < 1e-10, n
        assert rel(loop[n], ref_seq) < 1e-10, n
    # the tied cross term matters: the same weights untied (embedding and head squared
    # separately) give a different token diagonal; padding_idx row: head only
    untied = tied_llama()
    untied.lm_head.weight = nn.Parameter(untied.lm_head.weight.detach().clone())
    u = diagonal_fisher(untied, batch, granularity="token", backend="hooks", **F64)
    E = "model.embed_tokens.weight"
    assert float(u[E][0].abs().max()) == 0.0 and float(tok[E][0].abs().min()) > 0
    assert rel(u[E] + u["lm_head.weight"], tok[E]) > 0.05


@pytest.mark.parametrize("fisher_type", ["empirical", "true"])
def test_tied_llama_chunk_invariance_and_padding(fisher_type):
    model = tied_llama(1)
    ids, mask = lm_batch(b=4, T=5, seed=2)
    batch = {"input_ids": ids, "attention_mask": mask}
    for gran in ("token", "sequence"):
        ref = diagonal_fisher(model, [batch], fisher_type=fisher_type, granularity=gran,
                              chunk_size=None, seed=3, **F64)
        for cs in (1, 3):
            got = diagonal_fisher(model, [batch], fisher_type=fisher_type, granularity=gran,
                                  chunk_size=cs, seed=3, **F64)
            assert rel(flat(got), flat(ref)) < 1e-10, (gran, cs)
        # padding is masked out: garbage in the padded slots changes nothing
        ids2 = torch.where(mask.bool(), ids, torch.full_like(ids, 7))
        got = diagonal_fisher(model, [{"input_ids": ids2, "attention_mask": mask}],
                              fisher_type=fisher_type, granularity=gran, chunk_size=2, seed=3,
                              **F64)
        assert rel(flat(got), flat(ref)) < 1e-10, gran
    if fisher_type == "true":  # sampled labels: vmap/loop and hooks agree for sequences
        loop = diagonal_fisher(model, [batch], fisher_type=fisher_type, backend="loop", seed=3,
                               **F64)
        assert rel(flat(loop), flat(ref)) < 1e-10


def test_token_granularity_is_exact_per_token_for_head_and_final_norm():
    """For parameters after the last attention (the untied LM head, the final norm, the
    last MLP), position p's use only affects token p's loss, so the token granularity
    is exactly sum_t (grad l_t)^2 / N."""
    model, _ = load_model("tiny-llama", device="cpu", dtype="float64")
    ids = torch.randint(0, 256, (2, 5), generator=torch.Generator().manual_seed(0))
    params = ["lm_head.weight", "model.norm.weight", "model.layers.1.mlp.down_proj.weight",
              "model.layers.0.mlp.down_proj.weight"]
    d = diagonal_fisher(model, [ids], params=params, granularity="token", chunk_size=1,
                        **F64)
    named = dict(model.named_parameters())
    ref = {n: torch.zeros_like(named[n]) for n in params}
    for i in range(2):
        logits = model(ids[i:i + 1], use_cache=False).logits[0, :-1]
        for t in range(4):
            loss = nn.functional.cross_entropy(logits[t], ids[i, t + 1])
            gs = torch.autograd.grad(loss, [named[n] for n in params], retain_graph=True)
            for n, g in zip(params, gs):
                ref[n] += g.pow(2)
    for n in params[:3]:
        assert rel(d[n], ref[n] / 8) < 1e-10, n
    # below attention it is an approximation (cross-position terms dropped)
    assert rel(d[params[3]], ref[params[3]] / 8) > 1e-3


def test_granularity_bad_inputs():
    model = tied_llama()
    ids, _ = lm_batch()
    with pytest.raises(ValueError, match="granularity must be one of"):
        diagonal_fisher(model, [ids], granularity="word")
    for kw in ({"clip": 1.0}, {"backend": "vmap"}, {"backend": "loop"}):
        with pytest.raises(ValueError, match="granularity='token'"):
            diagonal_fisher(model, [ids], granularity="token", **kw)
    with pytest.raises(ValueError, match="granularity='token'"):  # nn.Conv2d: no hooks
        diagonal_fisher(cases.cnn(0), [cases.classification_data(2, 3, shape=(1, 5, 5))],
                        granularity="token")


class NormTwice(nn.Module):
    """One LayerNorm applied twice per forward pass (not hookable: vmap fallback)."""

    def __init__(self):
        super().__init__()
        self.fc, self.ln, self.head = nn.Linear(5, 4), nn.LayerNorm(4), nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.ln(torch.tanh(self.ln(self.fc(x)))))


def test_module_called_twice_falls_back_to_vmap_in_auto():
    torch.manual_seed(0)
    model = NormTwice().double()
    with torch.no_grad():
        model.ln.weight.uniform_(0.5, 1.5)
        model.ln.bias.uniform_(-0.5, 0.5)
    X, y = cases.classification_data(1, 6)
    ref = diagonal_fisher(model, [(X, y)], backend="loop", **F64)
    got = diagonal_fisher(model, [(X, y)], chunk_size=4, **F64)
    assert rel(flat(got), flat(ref)) < 1e-10
    with pytest.raises(ValueError, match="more than once"):
        diagonal_fisher(model, [(X, y)], backend="hooks")


def test_position_wise_model_token_granularity_equals_one_token_examples():
    """Embedding -> LayerNorm (weight, bias) -> Linear (bias), no mixing across positions:
    per-position gradients are the gradients of one-token examples, so the token
    granularity on [b, T] equals the per-example diagonal (loop) on [b * T, 1]."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(7, 4), nn.LayerNorm(4), nn.Tanh(), nn.Linear(4, 7))
    model = model.double()
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 1.5)
        model[1].bias.uniform_(-0.5, 0.5)
    X, y = cases.sequence_data(5, 3, T=4)
    tok = diagonal_fisher(model, [(X, y)], granularity="token", backend="hooks", chunk_size=2,
                          **F64)
    ref = diagonal_fisher(model, [(X.reshape(-1, 1), y.reshape(-1, 1))], backend="loop", **F64)
    assert rel(flat(tok), flat(ref)) < 1e-10
    seq = diagonal_fisher(model, [(X, y)], backend="hooks", chunk_size=2, **F64)
    seq_ref = diagonal_fisher(model, [(X, y)], backend="loop", **F64)
    assert rel(flat(seq), flat(seq_ref)) < 1e-10 and rel(flat(seq), flat(tok)) > 1e-3
