"""sweep(return_masks=True): the masks of every level, equal to a direct prune."""

import pytest
import torch

from workbench.core.models import load_model
from workbench.pruning.methods import prune
from workbench.pruning.sweeps import sweep


def test_sweep_returns_the_masks_of_every_level():
    model, _ = load_model("tiny-llama", device="cpu")
    dense = {n: p.detach().clone() for n, p in model.named_parameters()}
    data = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    levels = [0.0, 0.3, 0.6]
    for method, kw in (("magnitude", {"scope": "global"}),
                       ("wanda", {"calibration_tokens": data})):
        frame, masks = sweep(model, method, levels, return_masks=True, **kw)
        assert list(masks) == levels and list(frame["sparsity"]) == levels
        for (_, row), s in zip(frame.iterrows(), levels):
            pruned = sum(int((~m).sum()) for m in masks[s].values())
            total = sum(m.numel() for m in masks[s].values())
            assert pruned / total == pytest.approx(row["achieved_sparsity"])
            direct = prune(model, method, s, **kw).masks  # from the dense weights
            assert set(direct) == set(masks[s])
            assert all(torch.equal(direct[n], masks[s][n]) for n in direct)
            assert all(m.device.type == "cpu" and m.dtype == torch.bool
                       for m in masks[s].values())
            with torch.no_grad():
                for n, p in model.named_parameters():
                    p.copy_(dense[n])
        # the model is restored after the sweep; the default still returns a DataFrame
        assert all(torch.equal(p, dense[n]) for n, p in model.named_parameters())
    assert not isinstance(sweep(model, "magnitude", [0.5]), tuple)
    with pytest.raises(TypeError, match="return_masks"):
        sweep(model, "magnitude", [0.5], return_masks="yes")
