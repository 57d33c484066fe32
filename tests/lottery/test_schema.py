"""Tests for workbench.lottery.schema: one declared schema drives validation and keys."""

from __future__ import annotations

import dataclasses

import pytest

from workbench.lottery import schema
from workbench.lottery.schema import IMPConfig, config_fields, design_keys, make_field


def test_every_field_has_metadata_with_a_known_role():
    specs = config_fields()
    assert [s.name for s in specs] == [f.name for f in dataclasses.fields(IMPConfig)]
    for s in specs:
        assert s.role in schema.ROLES and s.help, s.name
        # the default itself passes the field's own check
        if s.value_type is not list:
            assert s.check(s.default) == s.default, s.name
    # fields the grid could not vary before the schema (issue 9) are declared
    roles = {s.name: s.role for s in specs}
    for name in ("weight_decay", "eval_batch_size", "n_calibration", "negative_prune_pct",
                 "autocast", "compile"):
        assert name in roles
    assert {"init", "rewind_to", "rank", "schedule", "prune_pct", "steps_per_round",
            "lr_schedule", "protect_sw", "scope"} <= set(design_keys())
    assert roles["batch_size"] == "budget" and roles["device"] == "runtime"
    assert "seed" not in design_keys() and "experiment" not in design_keys()


def test_from_params_validates_every_value():
    cfg = IMPConfig.from_params({"lr": 1, "schedule": "gradual", "targets": [0.1, 0.2],
                                 "weight_decay": 0})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float) and cfg.targets == (0.1, 0.2)
    assert IMPConfig.from_params({}) == IMPConfig()
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['initt'\].*known keys.*init"):
        IMPConfig.from_params({"initt": "xavier"})
    cases = [({"init": "orthogonal"}, ValueError, "init.*pretrained.*orthogonal"),
             ({"lr": -1.0}, ValueError, "lr must be in"),
             ({"n_rounds": 1.5}, TypeError, "n_rounds must be an integer"),
             ({"batch_size": True}, TypeError, "batch_size"),
             ({"protect_sw": "yes"}, TypeError, "protect_sw must be true or false"),
             ({"rank": "everything"}, ValueError, "rank.*block_linear.*everything"),
             ({"score_kind": "random"}, ValueError, "score_kind.*magnitude.*random"),
             ({"targets": [0.1, 2]}, ValueError, "targets.*0.1, 2"),
             ({"model": 3}, TypeError, "model must be a non-empty string")]
    for params, error, pattern in cases:
        with pytest.raises(error, match=pattern):
            IMPConfig.from_params(params)
    with pytest.raises(TypeError, match="params must be a dict"):
        IMPConfig.from_params([("lr", 1.0)])


def test_a_new_schema_field_is_settable_without_other_edits():
    # A subclass adds one field with metadata only; from_params, validation, the key lists
    # and the record dict pick it up with no other edit.
    Extended = dataclasses.make_dataclass(
        "Extended",
        [("label_smoothing", float, make_field(0.0, "design", "label smoothing",
                                               range=(0.0, 1.0), open=(False, True))),
         ("log_every", int, make_field(10, "runtime", "log interval", range=(1, None),
                                       integer=True))],
        bases=(IMPConfig,), frozen=True)
    cfg = Extended.from_params({"label_smoothing": 0.1, "log_every": 5, "lr": 1e-3})
    assert (cfg.label_smoothing, cfg.log_every, cfg.lr) == (0.1, 5, 1e-3)
    assert "label_smoothing" in design_keys(Extended)
    assert "label_smoothing" not in design_keys()
    assert cfg.to_dict()["label_smoothing"] == 0.1 and cfg.design()["label_smoothing"] == 0.1
    with pytest.raises(ValueError, match=r"label_smoothing must be in \[0.0, 1.0\)"):
        Extended.from_params({"label_smoothing": 1.0})
    with pytest.raises(TypeError, match="log_every must be an integer"):
        Extended(log_every=2.5)


def test_a_field_without_metadata_is_refused():
    Bare = dataclasses.make_dataclass("Bare", [("x", int, dataclasses.field(default=1))],
                                      bases=(IMPConfig,), frozen=True)
    with pytest.raises(ValueError, match="'x'.*no schema metadata"):
        config_fields(Bare)


def test_cross_field_rules():
    with pytest.raises(ValueError, match="rewind_step"):
        IMPConfig.from_params({"rewind_step": 5, "steps_per_round": 4})
    with pytest.raises(ValueError, match="rewind_to='reinit'"):
        IMPConfig.from_params({"rewind_to": "reinit", "rewind_step": 1})
    with pytest.raises(ValueError, match="strictly increasing"):
        IMPConfig.from_params({"schedule": "gradual", "targets": [0.2, 0.1]})
    cfg = IMPConfig.from_params({"schedule": "gradual", "targets": "0.05, 0.1"})
    assert cfg.round_targets() == [0.05, 0.1]
    assert IMPConfig(prune_pct=0.5, n_rounds=2).round_targets() == [0.5, 0.75]


def test_renamed_importance_kind_is_refused_naming_score_kind(tmp_path):
    """``importance_kind`` is now ``score_kind``: as a params key, a keyword and a spec key."""
    import yaml

    from workbench.experiments.design import specs

    assert schema.RENAMED_KEYS == {"importance_kind": "score_kind"}
    note = r"'importance_kind' is now 'score_kind'"
    with pytest.raises(ValueError, match=r"unknown config key\(s\) \['importance_kind'\] \("
                       + note):
        IMPConfig.from_params({"importance_kind": "wanda"})
    with pytest.raises(TypeError, match=note):
        IMPConfig(importance_kind="wanda")
    with pytest.raises(TypeError, match=note):
        dataclasses.replace(IMPConfig(), importance_kind="wanda")
    assert IMPConfig.from_params({"score_kind": "wanda"}).score_kind == "wanda"
    (tmp_path / "nb.py").write_text('# %% tags=["parameters"]\nrun_dir = None\nconfig = {}\n')
    raw = {"name": "old", "notebook": "nb.py", "defaults": {"importance_kind": "magnitude"},
           "experiments": {"B2": {}}}
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match=note):
        specs.load_spec(tmp_path / "old.yaml")


def test_field_kind_is_now_value_type():
    """``kind`` of a schema field (a Python type) is now ``value_type``."""
    with pytest.raises(TypeError, match="'kind' is now 'value_type'"):
        make_field(None, "design", "a list", kind=list)
    spec = {s.name: s for s in config_fields()}
    assert spec["targets"].value_type is list and spec["model"].value_type is str
    assert spec["seed"].value_type is int and spec["protect_sw"].value_type is bool
