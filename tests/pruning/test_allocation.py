"""OWL layer-sparsity allocation: formula, exact weighted mean, errors, planted outliers."""

import numpy as np
import pytest
import torch

from workbench.core.models import forward_logits, load_model
from workbench.pruning.allocation import owl_sparsities
from workbench.pruning.methods import prune


def test_weighted_mean_equals_target_and_matches_the_authors_formula():
    ratios = [0.010, 0.031, 0.002, 0.017, 0.009]
    # equal sizes: the authors' code (densities (D-min)/(max-min)*2*lam - mean + 1 - target)
    s = owl_sparsities(ratios, [100] * 5, 0.6, lam=0.08)
    D = np.array(ratios)
    dens = (D - D.min()) / (D.max() - D.min()) * 2 * 0.08
    dens = dens - dens.mean() + (1 - 0.6)
    np.testing.assert_allclose(s, 1 - dens, rtol=0, atol=1e-12)
    assert max(s) - min(s) == pytest.approx(0.16)
    # unequal sizes: the parameter-weighted mean is the target
    sizes = [10, 300, 25, 80, 7]
    s = owl_sparsities(ratios, sizes, 0.5, lam=0.1)
    assert np.dot(s, sizes) / sum(sizes) == pytest.approx(0.5, abs=1e-12)
    assert np.argmin(s) == int(np.argmax(ratios))  # most outliers -> least pruned
    assert owl_sparsities([0.3, 0.3], [1, 2], 0.7) == [0.7, 0.7]  # equal ratios: uniform


def test_infeasible_targets_and_bad_options_are_errors():
    with pytest.raises(ValueError, match=r"outside \[0, 1\)"):
        owl_sparsities([0.0, 0.1], [1, 1], 0.95, lam=0.08)
    with pytest.raises(ValueError, match=r"outside \[0, 1\)"):
        owl_sparsities([0.0, 0.1], [1, 1], 0.05, lam=0.08)
    model, _ = load_model("tiny-llama", device="cpu")
    data = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"allocation must be one of \('uniform', 'owl'\)"):
        prune(model, "wanda", 0.5, calibration_tokens=data, allocation="owls")
    with pytest.raises(ValueError, match=r"allocation must be one of \('uniform',\)"):
        prune(model, "taylor", 0.5, calibration_tokens=data, allocation="owl")
    with pytest.raises(ValueError, match="needs calibration"):
        prune(model, "magnitude", 0.5, allocation="owl")
    with pytest.raises(ValueError, match="needs scope"):
        prune(model, "wanda", 0.5, calibration_tokens=data, allocation="owl", scope="2:4")
    with pytest.raises(TypeError, match="lamda"):
        prune(model, "wanda", 0.5, calibration_tokens=data, allocation="owl",
              allocation_options={"lamda": 0.1})
    with pytest.raises(ValueError, match=r"outside \[0, 1\)"):
        prune(model, "wanda", 0.95, calibration_tokens=data, allocation="owl")


def _brute_outlier_ratio(model, data, block, m=5.0):
    """Reference: stored inputs, full Wanda score matrices of one block, concatenated."""
    names = [n for n, mod in model.named_modules() if f"layers.{block}." in n
             and isinstance(mod, torch.nn.Linear)]
    mods = dict(model.named_modules())
    X = {}
    hooks = [mods[n].register_forward_pre_hook(
        lambda _m, a, n=n: X.__setitem__(n, a[0].detach().reshape(-1, a[0].shape[-1])))
        for n in names]
    with torch.no_grad():
        forward_logits(model, data)
    for h in hooks:
        h.remove()
    scores = torch.cat([(mods[n].weight.abs() * X[n].norm(dim=0)).reshape(-1) for n in names])
    return float((scores > m * scores.mean()).float().mean())


@pytest.mark.parametrize("method", ["magnitude", "wanda", "wanda_obs", "sparsegpt"])
def test_planted_outliers_get_lower_sparsity(method):
    data = torch.randint(0, 256, (4, 24), generator=torch.Generator().manual_seed(0))
    model, _ = load_model("tiny-llama", device="cpu")
    with torch.no_grad():  # plant outlier features in block 1's MLP input weights
        model.model.layers[1].mlp.up_proj.weight[:, :3] *= 40.0
    ref = [_brute_outlier_ratio(model, data, b) for b in (0, 1)]
    res = prune(model, method, 0.5, calibration_tokens=data, allocation="owl")
    info = res.info
    np.testing.assert_allclose(info["owl_outlier_ratio"], ref, rtol=1e-6)
    s0, s1 = info["owl_group_sparsity"]
    assert s1 < 0.5 < s0 and s0 - s1 == pytest.approx(0.16)
    rep = res.report.set_index("name")
    for name, s in info["layer_sparsity"].items():
        assert rep.loc[name, "target_sparsity"] == s
        assert rep.loc[name, "sparsity"] == pytest.approx(s, abs=0.01)
    assert info["achieved_sparsity"] == pytest.approx(0.5, abs=0.005)
    params = dict(model.named_parameters())
    for name, keep in res.masks.items():
        assert (params[name][~keep] == 0).all()
