"""SparseGPT: the blocked kernel equals a plain one-column-at-a-time OBS reference built
from the paper's equations; N:M validity; lower reconstruction error than Wanda."""

import pytest
import torch

from workbench.core.models import load_model
from workbench.pruning.methods import prune
from workbench.pruning.sparsegpt import sparsegpt_layer


def _problem(out=6, d_in=24, tokens=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d_in, d_in, generator=g, dtype=torch.float64)
    X = torch.randn(tokens, d_in, generator=g, dtype=torch.float64) @ mix  # correlated inputs
    W = torch.randn(out, d_in, generator=g, dtype=torch.float64)
    return W, X


def _obs_reference(W, H, sparsity, *, block, damp=0.01, nm=None, row=False):
    """One column at a time (Frantar & Alistarh 2023, eqs. for OBS with the remaining set
    F = {j, ..., in-1}): inverse of H restricted to F by a plain dense inverse, saliency
    w_c^2 / [H_F^-1]_cc chosen at block starts (or every M columns for N:M), update
    W[:, F] -= (w_j - q_j) / [H_F^-1]_jj * [H_F^-1]_{j, F}."""
    W, H = W.clone(), H.clone()
    H += damp * H.diagonal().mean() * torch.eye(H.shape[0], dtype=H.dtype)
    cols = W.shape[1]
    hinv_diag = lambda c: torch.linalg.inv(H[c:, c:])[0, 0]  # noqa: E731
    pruned = torch.zeros_like(W, dtype=torch.bool)
    for j in range(cols):
        if nm is None and j % block == 0:
            cs = range(j, min(j + block, cols))
            sal = W[:, j:j + len(cs)] ** 2 / torch.stack([hinv_diag(c) for c in cs])
            if row:
                k = round(sparsity * len(cs))
                idx = torch.sort(sal, dim=1, stable=True).indices[:, :k]
                pruned[:, j:j + len(cs)].scatter_(1, idx, True)
            else:
                k = round(sparsity * sal.numel())
                idx = torch.sort(sal.reshape(-1), stable=True).indices[:k]
                blk = torch.zeros(sal.numel(), dtype=torch.bool)
                blk[idx] = True
                pruned[:, j:j + len(cs)] = blk.reshape(sal.shape)
        if nm is not None and j % nm[1] == 0:
            n, m = nm
            sal = W[:, j:j + m] ** 2 / torch.stack([hinv_diag(c) for c in range(j, j + m)])
            idx = torch.sort(sal, dim=1, stable=True).indices[:, :m - n]
            pruned[:, j:j + m].scatter_(1, idx, True)
        Finv = torch.linalg.inv(H[j:, j:])
        q = torch.where(pruned[:, j], torch.zeros_like(W[:, j]), W[:, j])
        W[:, j:] -= ((W[:, j] - q) / Finv[0, 0]).unsqueeze(1) * Finv[0].unsqueeze(0)
        W[:, j] = q
    return W, ~pruned


@pytest.mark.parametrize("scope,nm,block", [("layer", None, 8), ("layer", None, 24),
                                            ("layer", None, 5), ("row", None, 8),
                                            ("n:m", (2, 4), 8), ("n:m", (1, 4), 4)])
def test_blocked_equals_one_column_at_a_time_obs(scope, nm, block):
    W, X = _problem()
    H = 2 * X.t() @ X
    s = 0.5 if nm is None else 1 - nm[0] / nm[1]
    ref_w, ref_keep = _obs_reference(W, H, s, block=block, nm=nm, row=scope == "row")
    n, m = nm if nm else (None, None)
    new, keep = sparsegpt_layer(W, H, s, scope=scope, n=n, m=m, block_size=block)
    assert torch.equal(keep, ref_keep)
    torch.testing.assert_close(new, ref_w, rtol=1e-9, atol=1e-9)
    assert (new[~keep] == 0).all()


def test_layer_scope_lets_row_sparsity_vary_and_hits_the_block_target():
    W, X = _problem(out=16, d_in=32, tokens=200, seed=1)
    _, keep = sparsegpt_layer(W, X.t() @ X, 0.5, block_size=16)
    assert int((~keep).sum()) == W.numel() // 2
    per_row = (~keep).float().mean(1)
    assert per_row.std() > 0  # unlike Wanda's fixed per-row sparsity


@pytest.mark.parametrize("nm", [(2, 4), (4, 8)])
def test_nm_masks_are_valid_nm(nm):
    W, X = _problem(out=8, d_in=32, tokens=100, seed=2)
    n, m = nm
    _, keep = sparsegpt_layer(W.float(), (X.t() @ X).float(), 1 - n / m, scope="n:m", n=n, m=m,
                              block_size=16)
    groups = keep.reshape(W.shape[0], -1, m).sum(-1)
    assert torch.equal(groups, torch.full_like(groups, n))


def _wanda_prune(W, X, s):
    score = W.abs() * X.norm(dim=0)
    k = round(s * W.shape[1])
    idx = torch.sort(score, dim=1, stable=True).indices[:, :k]
    return W.clone().scatter_(1, idx, 0.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reconstruction_error_lower_than_wanda(seed):
    W, X = _problem(out=32, d_in=64, tokens=256, seed=seed)
    new, keep = sparsegpt_layer(W, X.t() @ X, 0.5, block_size=16)
    err = torch.linalg.norm(X @ (W - new).t())
    err_wanda = torch.linalg.norm(X @ (W - _wanda_prune(W, X, 0.5)).t())
    assert float((~keep).float().mean()) == 0.5
    assert err < 0.8 * err_wanda


def test_method_on_tiny_models_and_first_block_reconstruction():
    data = torch.randint(0, 256, (4, 24), generator=torch.Generator().manual_seed(0))
    for model_name in ("tiny-llama", "tiny-gpt2"):
        dense, _ = load_model(model_name, device="cpu")
        X = {}
        mods = {n: mod for n, mod in dense.named_modules() if n.endswith(("q_proj", "c_attn"))
                and (".0." in n)}
        def hook(_m, a, n):
            X[n] = a[0].detach().reshape(-1, a[0].shape[-1])

        hooks = [mod.register_forward_pre_hook(lambda _m, a, n=n: hook(_m, a, n))
                 for n, mod in mods.items()]
        with torch.no_grad():
            dense(data)
        for h in hooks:
            h.remove()
        sgpt, _ = load_model(model_name, device="cpu")
        wanda, _ = load_model(model_name, device="cpu")
        res = prune(sgpt, "sparsegpt", 0.5, calibration_tokens=data, block_size=16)
        prune(wanda, "wanda", 0.5, calibration_tokens=data)
        assert res.info["achieved_sparsity"] == pytest.approx(0.5, abs=0.01)
        for n in mods:
            w0 = dict(dense.named_modules())[n].weight.detach()
            ws = dict(sgpt.named_modules())[n].weight.detach()
            ww = dict(wanda.named_modules())[n].weight.detach()
            assert (ws[~res.masks[f"{n}.weight"]] == 0).all()
            err = lambda w: torch.linalg.norm(  # noqa: E731
                X[n] @ (w0 - w).t() if model_name == "tiny-llama" else X[n] @ (w0 - w))
            assert err(ws) < err(ww), (model_name, n)


def test_errors():
    W, X = _problem()
    H = X.t() @ X
    with pytest.raises(ValueError, match="divisible by M=4"):
        sparsegpt_layer(W, H, 0.5, scope="n:m", n=2, m=4, block_size=6)
    with pytest.raises(ValueError, match="hessian"):
        sparsegpt_layer(W, H[:3, :3], 0.5)
    model, _ = load_model("tiny-llama", device="cpu")
    data = torch.randint(0, 256, (2, 8))
    with pytest.raises(ValueError, match="scope='global' is not supported"):
        prune(model, "sparsegpt", 0.5, calibration_tokens=data, scope="global")
    with pytest.raises(TypeError, match="blocksize"):
        prune(model, "sparsegpt", 0.5, calibration_tokens=data, blocksize=64)
