"""Token budgets (workbench.lottery.budget): plan, refusal, record columns, findings."""

import math

import pandas as pd
import pytest

from workbench.lottery import budget
from workbench.lottery.schema import IMPConfig


def test_plan_and_refusal_numbers():
    cfg = IMPConfig(batch_size=12, seq_len=1024, grad_accum=20, steps_per_round=10000)
    plan = budget.plan_budget(cfg, 9_000_000_000, world_size=4)
    assert plan.tokens_per_step == 983_040 and plan.tokens_per_round == 9_830_400_000
    assert plan.epochs_per_round == pytest.approx(9_830_400_000 / 9e9)
    with pytest.raises(budget.BudgetExceeded, match=r"983,040 tokens per step \(12 x 1024 x "
                                                    r"20 accumulation x 4 rank"):
        budget.check_budget(cfg, 9_000_000_000, 4, allow_repeats=False)
    assert budget.check_budget(cfg, 9_000_000_000, 4, allow_repeats=True).exceeds
    assert not budget.check_budget(cfg, 9_000_000_000, 3, allow_repeats=False).exceeds


def test_oneshot_counts_rounds_without_rewind_and_tokens_per_round():
    cfg = IMPConfig(schedule="oneshot", n_rounds=3, steps_per_round=10, batch_size=1,
                    seq_len=10)
    plan = budget.plan_budget(cfg, 250)
    assert plan.stretch_rounds == 3 and plan.epochs_per_stretch == pytest.approx(1.2)
    tok = IMPConfig.from_params({"tokens_per_round": 1000, "batch_size": 2, "seq_len": 16})
    assert tok.steps_for(1) == math.ceil(1000 / 32) and tok.steps_for(2) == math.ceil(1000 / 64)
    with pytest.raises(ValueError, match="either steps_per_round or tokens_per_round"):
        IMPConfig.from_params({"tokens_per_round": 1000, "steps_per_round": 3})


def test_record_fields_accumulate():
    cfg = IMPConfig(batch_size=2, seq_len=8, grad_accum=1)
    r0 = budget.record_fields(cfg, train_tokens=160, world_size=2, steps=5, previous=None)
    r1 = budget.record_fields(cfg, train_tokens=160, world_size=1, steps=5, previous=r0)
    assert (r0["tokens_per_step"], r0["tokens_round"], r0["tokens_total"]) == (32, 160, 160)
    assert r0["epochs_round"] == 1.0 and r1["tokens_total"] == 240 and r1["world_size"] == 1
    assert r1["epochs_total"] == pytest.approx(1.5)


def test_findings_print_epochs_and_repeats():
    from workbench.experiments.analysis import findings

    rec = pd.DataFrame({"experiment": ["A", "A", "B"], "epochs_round": [0.5, 0.5, 3.0],
                        "max_epochs": [1.0, 1.0, 1.0], "round": [0, 1, 0]})

    class A:  # the attributes the scale helpers read
        name, profile, records = "s", "cpu", rec
        parameters = {"A": {"steps_per_round": 4}, "B": {"steps_per_round": 4}}
        design = {"A": {"steps_per_round": 10000}, "B": {"steps_per_round": 10000}}

    assert "0.5-3 epochs/round" in findings.scale_title(A)
    note = findings.scale_note(A)
    assert "Passes over the training split per round: 0.5-3 epochs" in note
    assert "B trains 3 epochs per round, over max_epochs = 1" in note
