"""Group Fisher (channels, attention heads with GQA) vs traces of dense Fisher blocks."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from workbench.curvature import dense_matrix, diagonal_fisher, group_fisher

from . import cases


def micro_llama():
    """One Llama block, 4 query heads sharing 2 key/value heads (GQA), head_dim 2."""
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=11, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=2,
                      max_position_embeddings=16, tie_word_embeddings=False,
                      attn_implementation="eager")  # SDPA has no double backward
    return LlamaForCausalLM(cfg).double().eval()


def test_heads_match_dense_blocks_with_gqa():
    model = micro_llama()
    ids = torch.randint(0, 11, (3, 5), generator=torch.Generator().manual_seed(1))
    pre = "model.layers.0.self_attn."
    names = [pre + p + ".weight" for p in ("q_proj", "k_proj", "v_proj", "o_proj")]
    # true Fisher (= GGN for softmax CE) of the mean token loss, dense
    F = dense_matrix("ggn", model, [ids], params=names)  # D = 64 + 32 + 32 + 64
    named = dict(model.named_parameters())
    diag = torch.split(F.diagonal(), [named[n].numel() for n in names])
    d = {n: t.reshape(named[n].shape) for n, t in zip(names, diag)}
    g = group_fisher(d, model)
    shapes = {n: p.shape for n, p in model.named_parameters() if n in names}
    offsets, i = {}, 0
    for n in names:
        offsets[n] = i
        i += shapes[n].numel()

    def block_trace(name, rows=None, cols=None):
        out, inn = shapes[name]
        idx = torch.arange(out * inn).reshape(out, inn)
        idx = idx[rows] if rows is not None else idx[:, cols]
        idx = idx.reshape(-1) + offsets[name]
        return float(F[idx][:, idx].trace())

    hd = 2
    for h in range(4):
        q = block_trace(names[0], rows=slice(h * hd, (h + 1) * hd))
        o = block_trace(names[3], cols=slice(h * hd, (h + 1) * hd))
        assert g[names[0] + "|head"][h].item() == pytest.approx(q, rel=1e-5)
        assert g[names[3] + "|head"][h].item() == pytest.approx(o, rel=1e-5)
        kv = 0.0
        for n in names[1:3]:
            t = block_trace(n, rows=slice((h // 2) * hd, (h // 2 + 1) * hd))
            assert g[n + "|head"][h // 2].item() == pytest.approx(t, rel=1e-5)
            kv += t / 2  # a key/value head is shared by 2 query heads
        assert g[pre[:-1] + "|head"][h].item() == pytest.approx(q + o + kv, rel=1e-5)
    assert g[names[1] + "|head"].shape == (2,)
    # combined heads sum to the attention block's trace
    assert float(g[pre[:-1] + "|head"].sum()) == pytest.approx(float(F.trace()), rel=1e-5)


def test_channels_match_dense_blocks():
    model = cases.cnn(0)
    X, y = cases.classification_data(2, 6, shape=(1, 5, 5))
    F = dense_matrix("empirical_fisher", model, [(X, y)])
    d = diagonal_fisher(model, [(X, y)])
    g = group_fisher(d)
    i = 0
    for n, p in model.named_parameters():
        idx = torch.arange(p.numel()).reshape(p.shape[0], -1) + i
        for c in range(p.shape[0]):
            ref = float(F[idx[c]][:, idx[c]].trace())
            assert g[n + "|channel"][c].item() == pytest.approx(ref, rel=1e-5, abs=1e-12)
        i += p.numel()
    assert set(g) == {n + "|channel" for n, _ in model.named_parameters()}


def test_bad_head_layout_raises():
    model = micro_llama()
    d = {n: torch.ones_like(p) for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match="heads"):
        group_fisher(d, num_heads=3, num_kv_heads=1, head_dim=2)


@pytest.mark.slow
def test_real_smollm2_head_groups(smollm2):
    """Real SmolLM2-135M (9 query heads, 3 key/value heads): shapes and conservation."""
    model, tok = smollm2
    ids = torch.tensor([tok.encode("The quick brown fox jumps over the lazy dog.")[:12]])
    pre = "model.layers.3.self_attn."
    names = [pre + p + ".weight" for p in ("q_proj", "k_proj", "v_proj", "o_proj")]
    d = diagonal_fisher(model, [ids], params=names, fisher_type="empirical")
    g = group_fisher(d, model)
    assert g[names[0] + "|head"].shape == (9,) and g[names[1] + "|head"].shape == (3,)
    assert g[names[3] + "|head"].shape == (9,) and g[names[0] + "|channel"].shape == (576,)
    total = sum(float(t.double().sum()) for t in d.values())
    assert float(g[pre[:-1] + "|head"].double().sum()) == pytest.approx(total, rel=1e-4)
    assert all(torch.isfinite(t).all() and (t >= 0).all() for t in d.values())


# ----------------------------------------------------------------- collection
def _linear_weights(model):
    from workbench.curvature.kfac import default_modules

    return [f"{n}.weight" for n in default_modules(model)]


@pytest.mark.parametrize("granularity", ["sequence", "token"])
@pytest.mark.parametrize("fisher_type", ["empirical", "true"])
def test_collected_groups_equal_reduced_full_diagonal(tiny_llama, granularity, fisher_type):
    from workbench.curvature.groups import collect_group_fisher

    model = tiny_llama[0]
    g = torch.Generator().manual_seed(2)
    batches = [torch.randint(0, 256, (3, 7), generator=g) for _ in range(2)]
    names = _linear_weights(model)
    full = diagonal_fisher(model, batches, params=names, fisher_type=fisher_type, n_samples=2,
                           granularity=granularity, seed=5, chunk_size=2)
    ref = group_fisher(full, model)
    got = collect_group_fisher(model, batches, fisher_type=fisher_type, n_samples=2,
                               granularity=granularity, seed=5, chunk_size=2)
    assert len([k for k in got if k.endswith("|head")]) == 2 * 5  # 4 projections + combined
    for key, v in got.items():
        if key.endswith("|input"):
            r = full[key.split("|")[0]].float().sum(0)
        else:
            r = ref[key]
        assert torch.allclose(v, r, rtol=1e-4, atol=1e-7 * float(r.abs().max())), key
    # memory O(groups): nothing per parameter is returned
    assert sum(v.numel() for v in got.values()) < sum(t.numel() for t in full.values()) / 10


def test_group_ema_and_expansion(tiny_llama):
    from workbench.curvature import FisherAccumulator
    from workbench.curvature.groups import collect_group_fisher, expand_groups

    model = tiny_llama[0]
    g = torch.Generator().manual_seed(3)
    b1, b2 = (torch.randint(0, 256, (2, 6), generator=g) for _ in range(2))
    acc = FisherAccumulator(decay=0.5, reduction="group", heads=None)
    x1, x2 = acc.update(model, [b1]), acc.update(model, [b2])
    key = "model.layers.0.mlp.up_proj.weight|channel"
    # bias-corrected EMA after two steps: (0.5 * x1 + x2) / 1.5
    assert torch.allclose(acc.get()[key], (0.5 * x1[key] + x2[key]) / 1.5, rtol=1e-6)
    assert set(acc.get()) == set(collect_group_fisher(model, [b1], heads=None))
    groups = collect_group_fisher(model, [b1])
    named = dict(model.named_parameters())
    for group in ("channel", "input", "head"):
        for mode in ("mean", "share"):
            ex = expand_groups(groups, model, group=group, mode=mode)
            assert ex, group
            for name, t in ex.items():
                assert t.shape == named[name].shape
                v = groups[f"{name}|{group}"]
                if mode == "mean":  # trace kept: expanded tensor sums to the groups' total
                    assert torch.isclose(t.sum(), v.sum(), rtol=1e-5)
                else:  # every weight of a group holds the group's value
                    assert set(t.unique().tolist()) <= set(v.tolist())
    o = expand_groups(groups, model, group="head", mode="share")
    h = groups["model.layers.0.self_attn.o_proj.weight|head"]
    assert torch.equal(o["model.layers.0.self_attn.o_proj.weight"][3, 16:32],
                       h[1].expand(16))  # o_proj: columns of head 1


def test_group_collection_bad_inputs(tiny_llama):
    from workbench.curvature.groups import collect_group_fisher

    model = tiny_llama[0]
    ids = torch.randint(0, 256, (1, 5), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="module 'model.layers.0.mlp' .LlamaMLP. has no "
                                         "attention heads"):
        collect_group_fisher(model, [ids], heads=["model.layers.0.mlp"])
    with pytest.raises(ValueError, match="'model.norm' is a LlamaRMSNorm; group Fisher"):
        collect_group_fisher(model, [ids], modules=["model.norm"])
    with pytest.raises(ValueError, match="fisher_type must be one of"):
        collect_group_fisher(model, [ids], fisher_type="exact")
    with pytest.raises(TypeError, match="unknown keyword"):
        from workbench.curvature import FisherAccumulator
        FisherAccumulator(reduction="group", granularty="token")


def test_group_collection_storage_options_and_underflow_warning(tiny_llama):
    import warnings

    from workbench.curvature import FisherAccumulator
    from workbench.curvature import _storage
    from workbench.curvature.groups import collect_group_fisher

    model = tiny_llama[0]
    ids = torch.randint(0, 256, (2, 6), generator=torch.Generator().manual_seed(4))
    ref = collect_group_fisher(model, [ids])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # group sums of tiny-llama do not underflow
        half = collect_group_fisher(model, [ids], storage_dtype=torch.float16, device="cpu")
    assert set(half) == set(ref)
    for k, v in half.items():
        assert v.dtype == torch.float16 and v.device.type == "cpu"
        assert torch.equal(v, ref[k].to(torch.float16))  # one rounding of the float32 sums
    vals = {"a|channel": torch.cat([torch.ones(98), torch.full((2,), 1e-9)])}  # 2 % < 6e-8
    with pytest.warns(RuntimeWarning, match=r"collect_group_fisher: 2\.00% of the entries"):
        _storage.store(vals, torch.float16, None, "collect_group_fisher")
    with pytest.raises(TypeError, match="storage_dtype"):
        collect_group_fisher(model, [ids], storage_dtype=torch.int8)
    # the group EMA in float16 keeps the float32 EMA's values (per-tensor scale)
    acc16 = FisherAccumulator(decay=0.99, reduction="group", heads=None,
                              storage_dtype=torch.float16)
    acc32 = FisherAccumulator(decay=0.99, reduction="group", heads=None)
    for b in ids.split(1):
        acc16.update_from(acc32.update(model, [b]))
    for k, v in acc32.get().items():
        torch.testing.assert_close(acc16.get()[k], v, rtol=2e-3, atol=0)
