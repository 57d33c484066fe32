"""Experiment specs: YAML files under ``data/experiments/`` that describe a grid.

A spec names the notebook that runs one cell, the seeds, parameters shared by every
experiment (``defaults``) and the experiments themselves::

    name: pilot
    notebook: 04_lottery_run
    seeds: [0, 1, 2]
    defaults: {model: smollm2-135m, n_rounds: 5, scope: global}
    experiments:
      B2: {purpose: Baseline, steps_per_round: 10000, prune_pct: 0.2}
      C2: {purpose: Init, init: xavier, steps_per_round: 10000, prune_pct: 0.2}

Keys of an experiment are run parameters, except the metadata keys in
:data:`EXPERIMENT_META_KEYS` (``purpose``, ``tracked``, ``notes``, ``seeds``, ``label``,
``color``, ``reference``).

**Parameters are validated by the lottery schema** (:mod:`workbench.lottery.schema`), not
by a list restated here: a key that is a field of
:class:`~workbench.lottery.schema.IMPConfig` is checked against its metadata (choices,
range, integer, type) and the cross-field rules of
:meth:`~workbench.lottery.schema.IMPConfig.from_params`. For a notebook that takes one
``config`` dict (notebook 04), every parameter must be a schema field; for a notebook
with flat parameters (test fixtures), names and types come from its parameters cell.
Adding a field to the schema therefore makes it settable here with no other edit.

A **profile** (``data/experiments/profiles.yaml`` or a ``profiles:`` section of the spec)
scales budgets and data sizes without changing the design: ``scale`` multiplies numeric
parameters (``steps_per_round: {factor: 0.0004, min: 1}``) and ``set`` overrides sizes
(``batch_size``, ``seq_len``, ...). A profile may not touch a design key
(:func:`workbench.lottery.schema.design_keys`), except that it may *scale* one the schema
marks ``scalable`` (steps per round: the ordering 3k < 10k < 20k is kept);
``profile=None`` runs the spec as written. Profiles live in
:mod:`workbench.experiments.design.profiles`.

**Questions** (``questions:``) declare what the grid answers, as named contrasts
(:mod:`workbench.experiments.design.contrasts`), validated when the spec is loaded.

Every problem is reported as a ``ValueError`` naming the key and the allowed values, when
the spec is loaded, before anything runs. The runs of a spec live in
``data/runs/<spec hash>/``, where the hash covers the resolved parameters of every
experiment (after the profile), not the seeds, so adding a seed reuses finished runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from workbench.core import paths
from workbench.core.checks import check_keys
from workbench.experiments.design.contrasts import (RUN_METRICS, parse_questions,
                                                    questions_to_raw)
from workbench.experiments.design.notebook_contract import notebook_parameters
from workbench.experiments.design.procedures import (RESERVED_KEYS, from_params, renamed_keys,
                                                     schema_fields)
from workbench.experiments.design.profiles import (DEFAULT_PROFILES_FILE, apply_profile,
                                                   load_profiles, profiles_path, read_yaml,
                                                   validate_profiles)

SPEC_KEYS = ("name", "description", "notebook", "seeds", "defaults", "experiments",
             "profiles", "slurm", "notes", "questions")
#: Keys of an experiment that are metadata, not notebook parameters (``label`` and
#: ``color`` are its display name and colour in figures; ``reference`` marks a control
#: drawn as a reference line).
EXPERIMENT_META_KEYS = ("purpose", "tracked", "notes", "seeds", "label", "color", "reference")


@dataclass
class Experiment:
    """One row of the experiment table.

    Attributes:
        name: Experiment id (``"A1"``); also its folder name under the runs folder.
        parameters: Notebook parameters (defaults merged in, profile not applied).
        seeds: Seeds to run.
        meta: Metadata (``purpose``, ``tracked``, ``notes``, ``label``).
    """

    name: str
    parameters: dict[str, Any]
    seeds: list[int]
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Spec:
    """A validated experiment spec (see the module docstring)."""

    name: str
    notebook: str
    experiments: dict[str, Experiment]
    profiles: dict[str, dict[str, Any]]
    description: str = ""
    slurm: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    questions: dict[str, Any] = field(default_factory=dict)

    def label(self, experiment: str) -> str:
        """Display label of an experiment: its ``label:`` key, else its id."""
        exp = self.experiments.get(experiment)
        return str(exp.meta.get("label") or experiment) if exp else str(experiment)

    def to_record(self, profile: str | None = None) -> dict[str, Any]:
        """What the grid stores as the runs folder's ``spec.json``: the spec under
        ``profile`` (``experiments``), as written (``design``), seeds, metadata and
        questions. :meth:`from_record` reads it back without the spec file."""
        return {"name": self.name, "profile": profile, "hash": self.hash(profile),
                "notebook": self.notebook, "experiments": self.resolve(profile),
                "design": self.resolve(None),
                "seeds": {k: e.seeds for k, e in self.experiments.items()},
                "meta": {k: e.meta for k, e in self.experiments.items()},
                "questions": questions_to_raw(self.questions)}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> "Spec":
        """A :class:`Spec` from a :meth:`to_record` dict (profiles are not kept: its
        ``experiments`` are the design, its parameters under the recorded profile stay
        in ``record["experiments"]``)."""
        design = record.get("design") or record.get("experiments") or {}
        meta, seeds = record.get("meta") or {}, record.get("seeds") or {}
        exps = {n: Experiment(n, dict(p), list(seeds.get(n, [0])), dict(meta.get(n, {})))
                for n, p in design.items()}
        questions = parse_questions(record.get("questions") or None,
                                    {n: e.parameters for n, e in exps.items()},
                                    where=f"spec record {record.get('name')!r}: questions")
        return cls(name=str(record.get("name", "")), notebook=str(record.get("notebook", "")),
                   experiments=exps, profiles={}, questions=questions)

    def references(self) -> list[str]:
        """Experiments marked ``reference: true`` (controls drawn as reference lines)."""
        return [n for n, e in self.experiments.items() if e.meta.get("reference")]

    def resolve(self, profile: str | None = None) -> dict[str, dict[str, Any]]:
        """Parameters of every experiment after applying ``profile``.

        Args:
            profile: A profile name from :attr:`profiles`, or ``None`` for the spec as
                written (the real budgets).

        Returns:
            ``{experiment: {parameter: value}}`` (without seed, experiment, output_dir).

        Raises:
            ValueError: If ``profile`` is unknown.
        """
        prof = self.profile(profile)
        return {name: apply_profile(exp.parameters, prof, where=f"profile {profile!r}")
                for name, exp in self.experiments.items()}

    def profile(self, profile: str | None) -> dict[str, Any]:
        """The profile mapping (empty for ``None``); ``ValueError`` when unknown."""
        if profile is None or profile == "none":
            return {}
        if profile not in self.profiles:
            raise ValueError(f"profile {profile!r} is not defined for spec {self.name!r}; "
                             f"allowed: {sorted(self.profiles) + ['none']}")
        return self.profiles[profile]

    def hash(self, profile: str | None = None) -> str:
        """12-hex-digit hash of the canonical resolved parameters (seeds excluded)."""
        return spec_hash(self, profile)

    def runs_dir(self, profile: str | None = None, root: str | os.PathLike | None = None) -> Path:
        """``<root>/<hash>`` with ``root`` defaulting to ``data/runs``."""
        return Path(root if root is not None else paths.RUNS_DIR) / self.hash(profile)


def _canonical(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, float) and obj.is_integer():
        return int(obj)
    return obj


def spec_hash(spec: Spec, profile: str | None = None) -> str:
    """Hash of a spec's canonical parameters after ``profile`` (seeds and metadata excluded).

    Two specs that run the same notebook with the same parameters per experiment have the
    same hash, whatever their name, comments, key order or seed list.
    """
    payload = {"notebook": Path(spec.notebook).stem, "experiments": spec.resolve(profile)}
    text = json.dumps(_canonical(payload), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# ----------------------------------------------------------------------------- validation


def _check_seeds(seeds: Any, where: str) -> list[int]:
    if (not isinstance(seeds, list) or not seeds
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds)):
        raise ValueError(f"{where} must be a non-empty list of non-negative integers, "
                         f"got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"{where} has duplicate seeds: {seeds!r}")
    return list(seeds)


def check_values(params: Mapping[str, Any], where: str,
                 defaults: Mapping[str, Any] | None = None, *, strict: bool = False) -> None:
    """Check parameter values of one experiment (after any profile) against the schema.

    Keys that are fields of the lottery schema are checked by their metadata and, all
    together, by :meth:`~workbench.lottery.schema.IMPConfig.from_params` (cross-field
    rules such as "gradual needs targets"). With ``strict`` every key must be a schema
    field (a notebook taking one ``config`` dict). With the notebook's ``defaults``
    (flat notebooks), a value must also have the type of the default.

    Raises:
        ValueError: Naming ``where``, the key, the value and the allowed values.
    """
    fields = schema_fields()
    if strict:
        check_keys(params, set(fields) - set(RESERVED_KEYS),
                   f"{where} (parameters: fields of the lottery schema)",
                   renamed=renamed_keys())
    known = {k: v for k, v in params.items() if k in fields and k not in RESERVED_KEYS}
    try:
        from_params(known)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from None
    for key, value in params.items():
        if defaults is not None and key in defaults and key not in fields:
            _check_type(key, value, defaults[key], where)
    check_gradual_rounds(params, where)
    check_model_and_corpus(params, where)


def check_gradual_rounds(params: Mapping[str, Any], where: str) -> None:
    """A gradual schedule prunes once per target: ``n_rounds`` (when given) must equal
    ``len(targets)`` (else the run records rounds it never pruned).

    Raises:
        ValueError: Naming ``where``, both values and the allowed one.
    """
    if params.get("schedule") != "gradual" or "n_rounds" not in params:
        return
    targets = params.get("targets")
    if isinstance(targets, (list, tuple)) and params["n_rounds"] != len(targets):
        raise ValueError(f"{where}: n_rounds={params['n_rounds']!r} but schedule='gradual' "
                         f"has {len(targets)} targets {list(targets)}: a gradual schedule "
                         f"prunes once per target, so n_rounds must be {len(targets)} (or "
                         "left out)")


def check_model_and_corpus(params: Mapping[str, Any], where: str) -> None:
    """``model`` and ``corpus`` of an experiment name something that exists, checked at
    spec load (no model is loaded): a known name, an existing path, or (models) a hub id
    ``owner/name`` in the local Hugging Face cache.

    Raises:
        ValueError: Naming ``where``, the key, the value and the known names.
    """
    from workbench.core.data import KNOWN_CORPORA
    from workbench.core.models import KNOWN_MODELS
    from workbench.lottery.budget import looks_like_shards

    def exists(value: str) -> bool:
        p = Path(value).expanduser()
        return p.exists() or (not p.is_absolute() and (paths.ROOT / p).exists())

    model = params.get("model")
    if isinstance(model, str) and model not in KNOWN_MODELS and not exists(model):
        cached = False
        if re.fullmatch(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*", model):
            try:
                from huggingface_hub import try_to_load_from_cache

                cached = isinstance(try_to_load_from_cache(model, "config.json"), str)
            except Exception:  # noqa: BLE001 - no cache, no hub library: not cached
                cached = False
        if not cached:
            raise ValueError(f"{where}: model={model!r} is not a known model, an existing "
                             f"path or a hub id in the local cache; known names: "
                             f"{list(KNOWN_MODELS)}")
    corpus = params.get("corpus")
    # A token-shard folder may be prepared after the spec is written: the plan (grid
    # status / run) names it and the `workbench data prepare` command when it is missing.
    if (isinstance(corpus, str) and corpus not in KNOWN_CORPORA and not exists(corpus)
            and not looks_like_shards(corpus)):
        raise ValueError(f"{where}: corpus={corpus!r} is not a known corpus or an existing "
                         f"file; known names: {list(KNOWN_CORPORA)}, or a .txt/.jsonl path")


def takes_config(notebook_defaults: Mapping[str, Any] | None) -> bool:
    """Does a notebook with this parameters cell take one ``config`` dict (plus
    ``run_dir``) instead of flat parameters? (Notebook 04 does: its config is an
    :class:`~workbench.lottery.schema.IMPConfig` as a dict.)"""
    return notebook_defaults is not None and "config" in notebook_defaults


def known_metrics() -> tuple[str, ...]:
    """Metric names a question may use: the lottery records' columns
    (:data:`workbench.lottery.imp.RECORD_COLUMNS`), ``val_nll`` (log perplexity, added
    when runs are loaded) and the per-run summary scalars."""
    from workbench.lottery.imp import RECORD_COLUMNS  # loads torch: imported on use

    return tuple(dict.fromkeys((*RECORD_COLUMNS, "val_nll", *RUN_METRICS)))


def _check_type(key: str, value: Any, default: Any, where: str) -> None:
    if default is None or value is None:
        return
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, (list, tuple)):
        ok = isinstance(value, (list, tuple))
    else:
        ok = True
    if not ok:
        raise ValueError(f"{where}: {key}={value!r} has type {type(value).__name__}, but the "
                         f"notebook's default {default!r} is {type(default).__name__}")


def spec_path(name: str | os.PathLike) -> Path:
    """Resolve a spec name (``"pilot"``) or path to the YAML file.

    Raises:
        FileNotFoundError: Listing the specs under ``data/experiments/``.
    """
    p = Path(name)
    for c in (p, paths.EXPERIMENTS_DIR / p, paths.EXPERIMENTS_DIR / f"{p}.yaml"):
        if c.is_file():
            return c
    raise FileNotFoundError(f"spec {str(name)!r} not found; available: {available_specs()}")


def available_specs() -> list[str]:
    """Names of the specs under ``data/experiments/`` (the profiles file excluded)."""
    return sorted(p.stem for p in paths.EXPERIMENTS_DIR.glob("*.yaml")
                  if p.name != DEFAULT_PROFILES_FILE)


def parse_spec(raw: Mapping[str, Any], *, where: str = "spec",
               profiles: Mapping[str, Any] | None = None,
               notebook_defaults: Mapping[str, Any] | None = None,
               path: Path | None = None) -> Spec:
    """Validate a spec mapping (already read from YAML) and build a :class:`Spec`.

    Args:
        raw: The spec mapping.
        where: Name used in error messages (the file).
        profiles: Profiles shared by all specs; the spec's own ``profiles`` win.
        notebook_defaults: The notebook's parameters cell (name -> default). When given,
            every parameter name must be declared there and have the default's type, or,
            for a notebook that takes a ``config`` dict, be a lottery-schema field.

    Raises:
        ValueError: On unknown keys or bad values, naming the key and the allowed values.
    """
    check_keys(raw, SPEC_KEYS, where)
    for key in ("name", "notebook", "experiments"):
        if key not in raw:
            raise ValueError(f"{where}: missing required key {key!r}")
    if not isinstance(raw["name"], str) or not raw["name"]:
        raise ValueError(f"{where}: name must be a non-empty string")
    if not isinstance(raw["notebook"], str):
        raise ValueError(f"{where}: notebook must be a notebook name or path (string)")
    seeds = _check_seeds(raw.get("seeds", [0]), f"{where}: seeds")
    defaults = raw.get("defaults") or {}
    if not isinstance(defaults, Mapping):
        raise ValueError(f"{where}: defaults must be a mapping of parameter -> value")
    experiments = raw["experiments"]
    if not isinstance(experiments, Mapping) or not experiments:
        raise ValueError(f"{where}: experiments must be a non-empty mapping of id -> parameters")
    all_profiles = {**dict(profiles or {}),
                    **validate_profiles(raw.get("profiles"), f"{where}: profiles")}
    slurm = raw.get("slurm") or {}
    if not isinstance(slurm, Mapping):
        raise ValueError(f"{where}: slurm must be a mapping of submitit parameters")

    allowed_params = None
    strict = takes_config(notebook_defaults)
    if notebook_defaults is not None and not strict:
        allowed_params = set(notebook_defaults) - set(RESERVED_KEYS)
    exps: dict[str, Experiment] = {}
    for name, body in experiments.items():
        w = f"{where}: experiment {name}"
        if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
            raise ValueError(f"{w}: experiment ids must be non-empty strings without '/'")
        body = body or {}
        if not isinstance(body, Mapping):
            raise ValueError(f"{w} must be a mapping of parameter -> value")
        params = {k: v for k, v in {**defaults, **body}.items() if k not in EXPERIMENT_META_KEYS}
        reserved = sorted(set(params) & set(RESERVED_KEYS))
        if reserved:
            raise ValueError(f"{w}: {reserved} are filled in by the grid; remove them")
        if allowed_params is not None:
            check_keys(params, allowed_params, f"{w} (notebook {raw['notebook']} parameters)")
        meta = {k: v for k, v in body.items() if k in EXPERIMENT_META_KEYS and k != "seeds"}
        exp_seeds = _check_seeds(body["seeds"], f"{w}: seeds") if "seeds" in body else seeds
        check_values(params, w, notebook_defaults, strict=strict)
        exps[name] = Experiment(name=name, parameters=params, seeds=exp_seeds, meta=meta)

    questions = parse_questions(raw.get("questions"),
                                {n: e.parameters for n, e in exps.items()},
                                where=f"{where}: questions",
                                metrics=known_metrics() if raw.get("questions") else None)
    spec = Spec(name=raw["name"], notebook=raw["notebook"], experiments=exps,
                profiles=all_profiles, description=str(raw.get("description") or ""),
                slurm=dict(slurm), path=path, questions=questions)
    own = set(raw.get("profiles") or {})
    _check_profile_keys(all_profiles, exps, allowed_params, where)
    for prof in all_profiles:  # every profile must give valid values
        for name, params in spec.resolve(prof).items():
            check_values(params, f"{where}: experiment {name} under profile {prof!r}",
                         notebook_defaults, strict=strict)
            # the spec's own profiles must fit its notebook now; a shared profile only when
            # it is used (run_grid checks every name against the notebook before dispatch)
            if allowed_params is not None and prof in own:
                check_keys(params, allowed_params, f"{where}: profile {prof!r}")
    return spec


def _check_profile_keys(profiles: Mapping[str, Mapping[str, Any]],
                        experiments: Mapping[str, "Experiment"], allowed_params: set | None,
                        where: str) -> None:
    """Keys a profile scales or sets are parameters somebody reads: fields of the lottery
    schema, parameters of the experiments, or the notebook's parameters (a typo such as
    ``steps_per_rnd`` would otherwise be skipped silently).

    Raises:
        ValueError: Naming the profile, the section, the keys and the allowed ones.
    """
    known = set(schema_fields()) | {k for e in experiments.values() for k in e.parameters}
    known |= set(allowed_params or ())
    for prof, body in profiles.items():
        for section in ("scale", "set"):
            unknown = sorted(set((body or {}).get(section) or {}) - known)
            if unknown:
                raise ValueError(f"{where}: profile {prof!r} {section}: {unknown} are not "
                                 f"parameters of this spec; allowed: {sorted(known)}")


def load_spec(name: str | os.PathLike | Spec, *, check_notebook: bool = True,
              profiles_file: str | os.PathLike | None = None) -> Spec:
    """Read and validate a spec file.

    Args:
        name: Spec name under ``data/experiments/`` (``"pilot"``), a path, or a
            :class:`Spec` (returned unchanged).
        check_notebook: Check parameter names and types against the notebook's
            parameters cell (the notebook must exist).
        profiles_file: Shared profiles (default: ``profiles.yaml`` beside the spec, i.e.
            ``data/experiments/profiles.yaml`` for the real specs; none if missing).

    Returns:
        The validated :class:`Spec`.

    Raises:
        FileNotFoundError: If the spec (or, with ``check_notebook``, the notebook) is
            missing.
        ValueError: On unknown keys or bad values.
    """
    if isinstance(name, Spec):
        return name
    path = spec_path(name)
    raw = read_yaml(path)
    if raw is None:
        raise ValueError(f"{path}: the spec file is empty")
    shared: dict[str, dict[str, Any]] = {}
    if profiles_file is None:
        # profiles.yaml beside the spec first, then the project's data/experiments/profiles.yaml
        profiles_file = profiles_path(path)
    if Path(profiles_file).is_file():
        shared = load_profiles(profiles_file)
    defaults = None
    if check_notebook:
        nb = raw.get("notebook") if isinstance(raw, Mapping) else None
        if isinstance(nb, str):
            defaults = notebook_parameters(_notebook_ref(nb, path))
    spec = parse_spec(raw, where=str(path), profiles=shared,
                      notebook_defaults=defaults, path=path)
    spec.notebook = str(_notebook_ref(spec.notebook, path))
    return spec


def _notebook_ref(notebook: str, spec_file: Path) -> str | Path:
    """A notebook name, or a path relative to the spec file when it exists there."""
    rel = spec_file.parent / notebook
    return rel if rel.is_file() else notebook
