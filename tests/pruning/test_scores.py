"""Importance scores against brute-force definitions on tiny models."""

import pytest
import torch

from workbench.pruning.scores import HYBRID_DEFAULT_WEIGHTS, importance
from workbench.pruning.masks import prunable_modules, select_masks
from workbench.core.models import forward_logits, load_model


@pytest.fixture(scope="module")
def llama():
    model, _ = load_model("tiny-llama", device="cpu")
    return model


@pytest.fixture(scope="module")
def data():
    return torch.randint(0, 256, (4, 24), generator=torch.Generator().manual_seed(0))


def _stored_inputs(model, modules, data):
    """Brute force: store every input row of every module, then stack."""
    store = {n: [] for n in modules}
    hs = [m.register_forward_hook(lambda mod, a, o, n=n: store[n].append(a[0].detach()))
          for n, m in modules.items()]
    with torch.no_grad():
        for b in data.split(2):
            forward_logits(model, b)
    for h in hs:
        h.remove()
    return {n: torch.cat([x.reshape(-1, x.shape[-1]) for x in v]) for n, v in store.items()}


def test_default_selection_and_magnitude(llama):
    s = importance(llama, "magnitude")
    params = dict(llama.named_parameters())
    assert len(s) == 14 and all("layers" in n and n.endswith("weight") for n in s)
    for n, t in s.items():
        assert torch.equal(t, params[n].detach().abs())
    assert set(importance(llama, "magnitude", include=[r"mlp\.down_proj"])) == {
        "model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight"}


def test_wanda_equals_brute_force_llama(llama, data):
    s = importance(llama, "wanda", tokens=data, batch_size=2)
    modules = prunable_modules(llama)
    X = _stored_inputs(llama, modules, data)
    for n, m in modules.items():
        norms = torch.linalg.vector_norm(X[n].double(), dim=0)  # over all tokens
        ref = m.weight.detach().double().abs() * norms[None, :]
        torch.testing.assert_close(s[n].double(), ref, rtol=1e-5, atol=1e-7)
        mk = select_masks({n: s[n]}, 0.5, scope="row")[n]
        ref_mask = torch.ones_like(mk)
        idx = torch.sort(ref.float(), dim=1, stable=True).indices[:, : ref.shape[1] // 2]
        ref_mask.scatter_(1, idx, False)
        assert (mk == ref_mask).float().mean() > 0.999


def test_wanda_gpt2_conv1d_orientation(data):
    model, _ = load_model("tiny-gpt2", device="cpu")
    s = importance(model, "wanda", tokens=data, batch_size=2)
    modules = prunable_modules(model)
    X = _stored_inputs(model, modules, data)
    for n, m in modules.items():
        W = m.weight.detach()  # [in, out]: y = x @ W
        assert W.shape[0] == X[n].shape[1]
        norms = torch.linalg.vector_norm(X[n], dim=0)
        torch.testing.assert_close(s[n], W.abs() * norms[:, None])


def _grads(model, names, data):
    params = dict(model.named_parameters())
    gs = []
    for b in data.split(2):
        logits = forward_logits(model, b)[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 b[:, 1:].reshape(-1))
        gs.append(torch.autograd.grad(loss, [params[n] for n in names]))
    return gs


def test_gradient_kinds_brute_force(llama, data):
    names = list(prunable_modules(llama))
    gs = _grads(llama, names, data)
    params = dict(llama.named_parameters())
    gn = importance(llama, "gradient_norm", tokens=data, batch_size=2)
    ta = importance(llama, "taylor", tokens=data, batch_size=2)
    for i, n in enumerate(names):
        per = torch.stack([g[i] for g in gs])
        torch.testing.assert_close(gn[n], per.pow(2).mean(0).sqrt(), rtol=1e-4, atol=1e-8)
        torch.testing.assert_close(ta[n], (params[n].detach() * per.mean(0)).abs(),
                                   rtol=1e-4, atol=1e-8)


def test_obd_empirical_is_obd_saliency_of_per_example_fisher(llama, data):
    small = data[:2, :12]
    f = importance(llama, "obd_empirical", tokens=small, batch_size=2)
    params = dict(llama.named_parameters())
    names = list(f)[:3]
    # brute force: squared gradients of each example's summed token loss / #tokens
    acc = {n: torch.zeros_like(params[n]) for n in names}
    for row in small:
        logits = forward_logits(llama, row[None])[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 row[None, 1:].reshape(-1), reduction="sum")
        for n, g in zip(names, torch.autograd.grad(loss, [params[n] for n in names])):
            acc[n] += g**2
    n_tok = small.shape[0] * (small.shape[1] - 1)
    for n in names:
        ref = 0.5 * params[n].detach() ** 2 * acc[n] / n_tok
        torch.testing.assert_close(f[n], ref, rtol=1e-3, atol=1e-10)


def test_obd_fisher_option_method_was_renamed_backend(llama, data):
    from workbench.pruning.scores import obd_true_scores

    with pytest.raises(TypeError, match=r"'method' is now 'backend'"):
        obd_true_scores(llama, tokens=data[:1, :6], method="loop")
    with pytest.raises(TypeError, match=r"unknown keyword argument\(s\) \['method'\] "
                                        r"\('method' is now 'backend'\)"):
        importance(llama, "obd_true", tokens=data[:1, :6], method="loop")


def test_hybrid(llama, data):
    h = importance(llama, "hybrid", tokens=data, batch_size=2)
    assert HYBRID_DEFAULT_WEIGHTS == {"magnitude": 0.5, "wanda": 0.5}
    for t in h.values():
        assert t.min() >= 0 and t.max() <= 1.0 + 1e-6
    only_mag = importance(llama, "hybrid", weights={"magnitude": 1.0})
    for n, t in only_mag.items():
        w = dict(llama.named_parameters())[n].detach().abs()
        torch.testing.assert_close(t, (w - w.min()) / (w.max() - w.min()))


def test_errors(llama):
    with pytest.raises(ValueError, match="kind must be one of"):
        importance(llama, "entropy")
    with pytest.raises(ValueError, match="needs calibration data"):
        importance(llama, "wanda")
    with pytest.raises(ValueError, match="weights keys"):
        importance(llama, "hybrid", weights={"bogus": 1.0})
    with pytest.raises(TypeError, match="weights"):  # a hybrid option given to magnitude
        importance(llama, "magnitude", weights={"magnitude": 1.0})
    with pytest.raises(TypeError, match="n_sampels"):
        importance(llama, "obd_true", tokens=torch.zeros(1, 4, dtype=torch.long), n_sampels=2)
    with pytest.raises(ValueError, match="fisher"):  # old name: an error, not Taylor scores
        importance(llama, "fisher", tokens=torch.zeros(1, 4, dtype=torch.long))


def test_every_registered_kind_dispatches_to_its_own_function(llama, data, monkeypatch):
    """No fall-through: each kind's entry function is the one that runs."""
    from workbench.pruning.registry import SCORE_KINDS

    for entry in SCORE_KINDS:
        called = []
        monkeypatch.setitem(SCORE_KINDS._entries, entry.name, type(entry)(
            entry.name, lambda model, *, tokens, include, exclude, batch_size, n=entry.name:
            called.append(n) or {}, entry.props))
        importance(llama, entry.name, tokens=data)
        assert called == [entry.name]


def test_taylor_masks_differ_from_magnitude_masks_and_follow_w_times_g(llama, data):
    """Seed 000: "Taylor differs from magnitude as expected". A Taylor score that lost
    its gradient factor (|w| * const) would give the magnitude masks: here at 50 % per
    layer at least 10 % of every layer's entries get a different decision, and the
    Taylor masks are those of the brute-force |w * mean g|."""
    names = list(prunable_modules(llama))
    gs = _grads(llama, names, data)
    params = dict(llama.named_parameters())
    ta = importance(llama, "taylor", tokens=data, batch_size=2)
    mag = importance(llama, "magnitude")
    m_ta = select_masks(ta, 0.5, scope="layer")
    m_mag = select_masks(mag, 0.5, scope="layer")
    for i, n in enumerate(names):
        differ = (m_ta[n] != m_mag[n]).float().mean().item()
        assert differ > 0.10, (n, differ)
        ref = (params[n].detach() * torch.stack([g[i] for g in gs]).mean(0)).abs()
        m_ref = select_masks({n: ref}, 0.5, scope="layer")[n]
        assert (m_ref == m_ta[n]).float().mean() > 0.999


def test_kind_keyword_is_now_score_kind(llama):
    from workbench.pruning.methods import score_method

    with pytest.raises(TypeError, match="'kind' is now 'score_kind'"):
        importance(llama, kind="magnitude")
    with pytest.raises(TypeError, match="'kind' is now 'score_kind'"):
        score_method(kind="magnitude")
    with pytest.raises(ValueError, match=r"score_kind must be one of .*registered score kinds"):
        importance(llama, "magnitud")
    s = importance(llama, score_kind="magnitude")
    assert all(torch.equal(v, llama.get_parameter(n).detach().abs().float()) for n, v in s.items())
