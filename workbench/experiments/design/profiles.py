"""Profiles: scale budgets and data sizes of a spec without changing its design.

A profile (``data/experiments/profiles.yaml``, or a ``profiles:`` section of a spec) has
``scale`` (multiply numeric parameters, ``steps_per_round: {factor: 0.0004, min: 1}``)
and ``set`` (override, e.g. ``batch_size``). **A profile may not touch a design key** of
the lottery schema (:func:`workbench.experiments.design.procedures.design_keys`): it may
not set one, and it may scale only those the schema marks ``scalable`` (steps per round:
scaling keeps the design's ordering 3k < 10k < 20k). Runs of different profiles never mix: the runs
folder hashes the resolved parameters.
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Any, Mapping

import yaml

from workbench.core import paths
from workbench.core.checks import check_keys
from workbench.experiments.design.procedures import RESERVED_KEYS, design_keys, scalable_keys

#: Keys of a profile.
PROFILE_KEYS = ("description", "scale", "set")
DEFAULT_PROFILES_FILE = "profiles.yaml"


def apply_profile(parameters: Mapping[str, Any], profile: Mapping[str, Any],
                  *, where: str = "profile") -> dict[str, Any]:
    """Scale and override ``parameters`` with a profile; the design stays as it is.

    ``scale: {key: factor}`` or ``{key: {factor: f, min: m}}`` replaces a non-zero integer
    ``v`` with ``max(m, round(v * f))`` (``m`` defaults to 1; halves round up) and a float
    with ``v * f`` (at least ``m`` when given); zero stays zero. ``set: {key: value}``
    replaces the value.
    """
    out = dict(parameters)
    for key, rule in (profile.get("scale") or {}).items():
        if key not in out:
            continue
        factor, minimum = _scale_rule(rule, f"{where}: scale.{key}")
        value = out[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}: scale.{key} needs a numeric parameter, got {value!r}")
        if value == 0:
            continue  # zero stays zero (no warmup stays no warmup)
        if isinstance(value, int):
            m = minimum if minimum is not None else 1
            out[key] = max(int(m), int(math.floor(value * factor + 0.5)))
        else:
            out[key] = max(minimum, value * factor) if minimum is not None else value * factor
    for key, value in (profile.get("set") or {}).items():
        out[key] = copy.deepcopy(value)
    return out


def _scale_rule(rule: Any, where: str) -> tuple[float, float | None]:
    if isinstance(rule, Mapping):
        unknown = sorted(set(rule) - {"factor", "min"})
        if unknown or "factor" not in rule:
            raise ValueError(f"{where} must be a number or {{factor: f, min: m}}; "
                             f"bad keys {unknown}; allowed: ['factor', 'min']")
        factor, minimum = rule["factor"], rule.get("min")
    else:
        factor, minimum = rule, None
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor <= 0:
        raise ValueError(f"{where}: factor must be a positive number, got {factor!r}")
    if minimum is not None and (isinstance(minimum, bool) or not isinstance(minimum, (int, float))):
        raise ValueError(f"{where}: min must be a number, got {minimum!r}")
    return float(factor), minimum


def validate_profiles(profiles: Any, where: str) -> dict[str, dict[str, Any]]:
    """Check a ``{name: profile}`` mapping: keys, sections, scale rules, no design key
    set or scaled (unless scalable), no parameter the grid fills in.

    Raises:
        ValueError: Naming the profile, the section, the key and what is allowed.
    """
    if profiles is None:
        return {}
    if not isinstance(profiles, Mapping):
        raise ValueError(f"{where} must be a mapping of profile name -> profile")
    out = {}
    for name, prof in profiles.items():
        w = f"{where}.{name}"
        check_keys(prof, PROFILE_KEYS, w)
        for section in ("scale", "set"):
            if prof.get(section) is not None and not isinstance(prof[section], Mapping):
                raise ValueError(f"{w}.{section} must be a mapping of parameter -> value")
        design = set(design_keys())
        scalable = set(scalable_keys())
        for section in ("scale", "set"):
            touched = set(prof.get(section) or {}) & design
            if section == "scale":
                touched -= scalable
            if touched:
                raise ValueError(
                    f"{w}.{section} changes design key(s) {sorted(touched)}; a profile may "
                    f"only set budget/runtime parameters and scale "
                    f"{sorted(scalable)}, not the design keys {sorted(design)}")
            reserved = sorted(set(prof.get(section) or {}) & set(RESERVED_KEYS))
            if reserved:
                raise ValueError(f"{w}.{section} sets {reserved}, which the grid fills in")
        for key, rule in (prof.get("scale") or {}).items():
            _scale_rule(rule, f"{w}.scale.{key}")
        out[str(name)] = dict(prof)
    return out


def read_yaml(path: str | os.PathLike) -> Any:
    """Parse a YAML file; a syntax error names the file, line and column.

    Raises:
        ValueError: ``<path>: YAML syntax error at line L, column C: <problem>``.
    """
    try:
        return yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ValueError(f"{path}: YAML syntax error{where}: {problem}") from None


def profiles_path(spec_file: str | os.PathLike) -> Path:
    """The shared profiles of a spec file: ``profiles.yaml`` beside it when there is one,
    else the project's ``data/experiments/profiles.yaml`` (which may not exist)."""
    beside = Path(spec_file).parent / DEFAULT_PROFILES_FILE
    return beside if beside.is_file() else paths.EXPERIMENTS_DIR / DEFAULT_PROFILES_FILE


def load_profiles(path: str | os.PathLike | None = None) -> dict[str, dict[str, Any]]:
    """Read and validate a profiles file (default ``data/experiments/profiles.yaml``)."""
    path = Path(path) if path is not None else paths.EXPERIMENTS_DIR / DEFAULT_PROFILES_FILE
    if not path.is_file():
        return {}
    return validate_profiles(read_yaml(path) or {}, str(path))
