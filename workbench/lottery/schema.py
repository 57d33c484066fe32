"""The lottery experiment's schema: one dataclass, every parameter declared once.

:class:`IMPConfig` is the single source of truth for a lottery-ticket run (one cell of
the super-weight x lottery-ticket table). Each field carries its metadata in
``dataclasses.field(metadata=...)``:

* ``role``: what the parameter is to the experiment (:data:`ROLES`):

  - ``"design"``: a factor of the experiment table (init, schedule, pruning rate, steps
    per round, LR schedule, SW protection, rewind target, which weights are ranked, ...).
    Runs are paired on these (:func:`design_keys`); a profile may not *set* them.
  - ``"budget"``: scale of the measurement (batch size, sequence lengths, validation
    blocks, calibration blocks, ...); profiles set and scale them freely.
  - ``"runtime"``: how the computation runs (device, autocast, compile, evaluation batch
    size); does not change what is measured (up to floating-point rounding).
  - ``"label"``: identifies a run without being a factor (``experiment`` id, ``seed``).

* ``scalable``: a design factor a profile may *scale* by a common factor (keeps the
  design's ordering, e.g. 3k < 10k < 20k steps per round), but not set.
* ``choices``: allowed values (a tuple, or a zero-argument callable returning one, for
  registries filled at import time, e.g. the score kinds).
* ``range``: ``(lo, hi)`` bounds (``None`` = unbounded), with ``open=(lo_open,
  hi_open)``; ``integer``: must be an ``int`` (bools refused).
* ``help``: one line for humans (spec docs, error messages).

Everything else derives from it: :func:`config_fields` lists the fields as
:class:`FieldSpec` rows, :meth:`IMPConfig.from_params` builds a config from a plain dict
(a spec's parameters, notebook 04's ``config``) and rejects unknown keys and bad values
with :mod:`workbench.core.checks` messages (a renamed key, :data:`RENAMED_KEYS`, is
refused naming its new name), :func:`design_keys` gives the keys runs are paired on.
Adding a field here makes it settable from a spec and visible in the records (every
config field is a column of every record) without editing any other module.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from workbench.core.checks import check_choice, check_range, renamed_keywords, renamed_note
from workbench.core.shards import MANIFEST, open_shards, shard_folder
from workbench.lottery.train import AUTOCAST, LR_SCHEDULES
from workbench.pruning.registry import SCORE_KINDS

ROLES = ("design", "budget", "runtime", "label")
INITS = ("pretrained", "xavier", "kaiming", "normal")
REWIND_TO = ("init", "reinit")
REINIT_SCHEMES = ("xavier", "kaiming", "normal")
SCHEDULES = ("constant", "gradual", "oneshot")
IMP_SCOPES = ("global", "layer")
RANKS = ("block_linear", "all_matrices")
CONTROLS = ("none", "positive", "negative")
DEVICES = ("auto", "cpu", "cuda")
#: Config keys (spec YAML keys, notebook 04 ``config`` keys, record columns) that were
#: renamed, old -> new: an old one is refused like an unknown key, naming the new one.
RENAMED_KEYS = {"importance_kind": "score_kind"}


def _f(default: Any, role: str, help: str, *, choices=None, range=None, open=(False, False),
       integer: bool = False, scalable: bool = False, value_type: type | None = None):
    """A dataclass field with schema metadata (see the module docstring)."""
    if role not in ROLES:  # a typo here would silently drop a field from the design
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    meta = dict(role=role, help=help, choices=choices, range=range, open=tuple(open),
                integer=integer, scalable=scalable, value_type=value_type)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class FieldSpec:
    """One schema field (a row of :func:`config_fields`).

    Attributes:
        name: Parameter name.
        default: Default value.
        role: One of :data:`ROLES`.
        choices: Allowed values, or ``None`` (any value of the right type).
        range: ``(lo, hi)`` bounds or ``None``; ``open`` says which ends are open.
        open: ``(lo_open, hi_open)``.
        integer: Must be an integer.
        scalable: A design factor a profile may scale (not set).
        help: One-line description.
        value_type: Python type of a free-form value (``str``, ``bool``, ``float``, ``list``),
            derived from the default when not declared.
    """

    name: str
    default: Any
    role: str
    choices: tuple | None
    range: tuple | None
    open: tuple[bool, bool]
    integer: bool
    scalable: bool
    help: str
    value_type: type | None

    def check(self, value: Any) -> Any:
        """Return ``value`` normalised (ints to float for float fields) or raise.

        Raises:
            ValueError / TypeError: Message names the field, the value and what is allowed.
        """
        if self.choices is not None:
            return check_choice(self.name, value, self.choices)
        if self.value_type is bool:
            if not isinstance(value, bool):
                raise TypeError(f"{self.name} must be true or false, got {value!r}")
            return value
        if self.value_type is str:
            if not isinstance(value, str) or not value:
                raise TypeError(f"{self.name} must be a non-empty string, got {value!r}")
            return value
        if self.integer or self.range is not None or self.value_type in (int, float):
            lo, hi = self.range if self.range is not None else (None, None)
            check_range(self.name, value, lo, hi, lo_open=self.open[0],
                        hi_open=self.open[1], integer=self.integer)
            return value if self.integer else float(value)
        return value


def config_fields(cls: type | None = None) -> list[FieldSpec]:
    """The schema of ``cls`` (default :class:`IMPConfig`), one :class:`FieldSpec` a field.

    Choices given as callables (registries) are resolved now.
    """
    cls = IMPConfig if cls is None else cls
    out = []
    for f in dataclasses.fields(cls):
        meta = dict(f.metadata)
        if "role" not in meta:
            raise ValueError(f"field {f.name!r} of {cls.__name__} has no schema metadata "
                             "(declare it with role=..., help=...)")
        choices = meta.get("choices")
        if callable(choices):
            choices = tuple(choices())
        default = f.default if f.default is not dataclasses.MISSING else None
        value_type = meta.get("value_type") or (type(default) if default is not None else None)
        out.append(FieldSpec(
            name=f.name, default=default, role=meta["role"],
            choices=tuple(choices) if choices is not None else None,
            range=tuple(meta["range"]) if meta.get("range") is not None else None,
            open=tuple(meta.get("open", (False, False))), integer=bool(meta.get("integer")),
            scalable=bool(meta.get("scalable")), help=str(meta.get("help", "")),
            value_type=value_type))
    return out


def keys(role: str, cls: type | None = None) -> tuple[str, ...]:
    """Names of the fields with ``role`` (one of :data:`ROLES`), in declaration order."""
    check_choice("role", role, ROLES)
    return tuple(s.name for s in config_fields(cls) if s.role == role)


def design_keys(cls: type | None = None) -> tuple[str, ...]:
    """The design factors: runs with equal values here (and the same seed) are the same
    procedure; contrasts pair runs on them."""
    return keys("design", cls)


def scalable_keys(cls: type | None = None) -> tuple[str, ...]:
    """Design factors a profile may scale (never set)."""
    return tuple(s.name for s in config_fields(cls) if s.scalable)


def _parse_targets(value: Any) -> tuple[float, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):  # "0.05,0.1,0.15" from a command line
        value = [t for t in value.replace(" ", "").strip("[]()").split(",") if t]
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"targets must be a list of sparsities or null, got {value!r}")
    out = []
    for t in value:
        try:
            t = float(t) if isinstance(t, str) else t
            out.append(float(check_range("targets", t, 0.0, 1.0, lo_open=True, hi_open=True)))
        except (TypeError, ValueError):
            raise ValueError(f"targets must be a list of sparsities in (0, 1), got "
                             f"{list(value)!r}") from None
    return tuple(out)


@dataclass(frozen=True)
class IMPConfig:
    """Every parameter of one lottery-ticket run; see :mod:`workbench.lottery.imp` for the
    semantics and the module docstring here for the metadata.

    Build from a plain dict with :meth:`from_params` (validated, unknown keys refused);
    ``IMPConfig(**kw)`` validates too (:meth:`validate`).
    """

    # --- labels
    experiment: str = _f("scratch", "label", "experiment id (a label of every record)")
    seed: int = _f(0, "label", "seeds the batches, the random θ0 and the reinit draw",
                   range=(0, None), integer=True)
    # --- design: what is pruned, from where, how
    model: str = _f("smollm2-135m", "design", "model name or path for workbench.load_model")
    corpus: str = _f("wiki-excerpt", "design", "corpus for workbench.load_corpus, or a token "
                     "shard folder from `workbench data prepare` (relative to the project root)")
    init: str = _f("pretrained", "design", "θ0: the weights the run starts from and rewinds "
                   "to (pretrained, or a fresh draw of a scheme)", choices=INITS)
    rewind_to: str = _f("init", "design", "rewind target after pruning: init = θ0 (or the "
                        "weights after rewind_step steps); reinit = a fresh random draw "
                        "(Frankle & Carbin's control)", choices=REWIND_TO)
    rewind_step: int = _f(0, "design", "late rewinding: rewind to the weights after this "
                          "many steps of round 0 (0 = θ0)", range=(0, None), integer=True)
    reinit_scheme: str = _f("xavier", "design", "scheme of the rewind_to=reinit draw",
                            choices=REINIT_SCHEMES)
    schedule: str = _f("constant", "design", "pruning schedule", choices=SCHEDULES)
    prune_pct: float = _f(0.2, "design", "constant: fraction of the remaining weights pruned "
                          "per round; oneshot: total sparsity", range=(0.0, 1.0),
                          open=(True, True))
    targets: tuple[float, ...] | None = _f(None, "design", "gradual: cumulative sparsities, "
                                           "strictly increasing in (0, 1)", value_type=list)
    n_rounds: int = _f(3, "design", "pruning rounds after round 0 (constant, oneshot, "
                       "controls)", range=(1, None), integer=True)
    scope: str = _f("global", "design", "magnitude threshold over all ranked weights "
                    "(global) or per tensor (layer)", choices=IMP_SCOPES)
    rank: str = _f("block_linear", "design", "which weights are ranked and pruned: the "
                   "transformer blocks' linear layers, or every weight matrix (embeddings "
                   "and head included)", choices=RANKS)
    score_kind: str = _f("magnitude", "design", "score kind that ranks the weights "
                         "(workbench.importance)", choices=SCORE_KINDS.names)
    steps_per_round: int = _f(4, "design", "optimizer steps per round (round 0 included)",
                              range=(0, None), integer=True, scalable=True)
    lr: float = _f(1e-4, "design", "peak learning rate (AdamW)", range=(0.0, None),
                   open=(True, False))
    lr_schedule: str = _f("constant", "design", "LR schedule, restarted each round",
                          choices=LR_SCHEDULES)
    warmup_steps: int = _f(0, "design", "linear LR warmup steps", range=(0, None),
                           integer=True, scalable=True)
    weight_decay: float = _f(0.0, "design", "AdamW decoupled weight decay", range=(0.0, None))
    beta1: float = _f(0.9, "design", "AdamW beta1 (the origin, nanoGPT: 0.9)", range=(0.0, 1.0),
                      open=(False, True))
    beta2: float = _f(0.999, "design", "AdamW beta2 (the origin, nanoGPT: 0.95)",
                      range=(0.0, 1.0), open=(False, True))
    grad_clip: float = _f(0.0, "design", "clip the global gradient norm to this value "
                          "(0 = no clipping; the origin, nanoGPT: 1.0)", range=(0.0, None))
    min_lr_ratio: float = _f(0.0, "design", "warmup_cosine decays to min_lr_ratio * lr "
                             "(nanoGPT: 0.1)", range=(0.0, 1.0))
    tokens_per_round: int = _f(0, "design", "training tokens per round, all ranks together; "
                               "> 0 replaces steps_per_round by ceil(tokens_per_round / "
                               "tokens_per_step)", range=(0, None), integer=True,
                               scalable=True)
    protect_sw: bool = _f(False, "design", "never prune the pre-trained super weights")
    control: str = _f("none", "design", "positive: train and rewind, never prune; negative: "
                      "aggressive pruning", choices=CONTROLS)
    negative_prune_pct: float = _f(0.5, "design", "per-round fraction of the negative "
                                   "control", range=(0.0, 1.0), open=(True, True))
    sw_threshold: float = _f(1000.0, "design", "super-weight detection: activation both "
                             "spikes must reach", range=(0.0, None), open=(True, False))
    sw_spike_ratio: float = _f(2.0, "design", "super-weight detection: largest / second "
                               "output channel", range=(1.0, None))
    # --- budget: how much data and compute the measurement uses
    batch_size: int = _f(2, "budget", "blocks per micro-batch", range=(1, None), integer=True)
    grad_accum: int = _f(1, "budget", "micro-batches per optimizer step", range=(1, None),
                         integer=True)
    seq_len: int = _f(64, "budget", "training block length, tokens", range=(2, None),
                      integer=True)
    n_val_blocks: int = _f(8, "budget", "validation blocks", range=(1, None), integer=True)
    val_seq_len: int = _f(128, "budget", "validation block length, tokens", range=(2, None),
                          integer=True)
    eval_pruned: bool = _f(True, "budget", "also evaluate right after prune + rewind "
                           "(val_ppl_pruned)")
    n_calibration: int = _f(8, "budget", "training blocks for data-dependent score "
                            "kinds", range=(1, None), integer=True)
    sw_blocks: int = _f(2, "budget", "validation blocks fed to the super-weight detector",
                        range=(1, None), integer=True)
    sw_seq_len: int = _f(64, "budget", "length of those blocks, tokens", range=(2, None),
                         integer=True)
    max_epochs: float = _f(1.0, "budget", "most passes over the training split one stretch "
                           "of training without a rewind may make (a round; the one-shot "
                           "schedule's rounds 1..R); a plan above it is refused unless "
                           "repeats are allowed", range=(0.0, None), open=(True, False))
    # --- runtime
    device: str = _f("auto", "runtime", "auto = CUDA when present", choices=DEVICES)
    eval_batch_size: int = _f(8, "runtime", "blocks per validation forward pass",
                              range=(1, None), integer=True)
    autocast: str = _f("auto", "runtime", "bf16 autocast in training (auto = on CUDA)",
                       choices=AUTOCAST)
    compile: bool = _f(False, "runtime", "torch.compile the training loop")

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", _parse_targets(self.targets))
        self.validate()

    @classmethod
    def fields(cls) -> list[FieldSpec]:
        """:func:`config_fields` of this class."""
        return config_fields(cls)

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None) -> "IMPConfig":
        """Build a validated config from a plain dict (unset keys take their default).

        Raises:
            ValueError: Unknown key (message lists the known keys), or a bad value
                (message names the field, the value and what is allowed).
            TypeError: A value of the wrong type, or ``params`` not a dict.
        """
        params = {} if params is None else params
        if not isinstance(params, Mapping):
            raise TypeError(f"params must be a dict of config values, got "
                            f"{type(params).__name__}")
        specs = {s.name: s for s in config_fields(cls)}
        unknown = sorted(set(params) - set(specs))
        if unknown:
            raise ValueError(f"unknown config key(s) {unknown}"
                             f"{renamed_note(unknown, RENAMED_KEYS)}; known keys: "
                             f"{sorted(specs)}")
        if params.get("tokens_per_round") and "steps_per_round" in params:
            raise ValueError("state either steps_per_round or tokens_per_round (> 0), not "
                             f"both; got steps_per_round={params['steps_per_round']!r}, "
                             f"tokens_per_round={params['tokens_per_round']!r}")
        values = {}
        for name, value in params.items():
            field_spec = specs[name]
            values[name] = (_parse_targets(value) if field_spec.value_type is list
                            else field_spec.check(value))
        return cls(**values)

    def validate(self) -> None:
        """Check every field against its metadata, then the cross-field rules.

        Raises:
            ValueError / TypeError: Naming the first bad field, its value and what is allowed.
        """
        for field_spec in config_fields(type(self)):
            if field_spec.value_type is not list:
                field_spec.check(getattr(self, field_spec.name))
        _check_corpus(self.corpus)
        if self.rewind_to == "init" and self.rewind_step > self.steps_per_round:
            raise ValueError(f"rewind_step must be in [0, steps_per_round="
                             f"{self.steps_per_round}], got {self.rewind_step}")
        if self.rewind_to == "reinit" and self.rewind_step != 0:
            raise ValueError(f"rewind_step must be 0 with rewind_to='reinit' (a fresh draw "
                             f"has no training step), got {self.rewind_step}")
        if self.schedule == "gradual":
            t = self.targets
            if not t:
                raise ValueError("targets must be a non-empty list of sparsities for "
                                 "schedule='gradual', e.g. [0.05, 0.10, 0.15, 0.20]")
            if any(b <= a for a, b in zip(t, t[1:])):
                raise ValueError(f"targets must be strictly increasing, got {list(t)}")

    def round_targets(self) -> list[float]:
        """Cumulative target sparsity of rounds 1..R."""
        if self.control == "negative":
            p, rounds = self.negative_prune_pct, self.n_rounds
            return [1.0 - (1.0 - p) ** r for r in range(1, rounds + 1)]
        if self.schedule == "gradual":
            out = list(self.targets)
        elif self.schedule == "oneshot":
            out = [float(self.prune_pct)] * self.n_rounds
        else:
            out = [1.0 - (1.0 - self.prune_pct) ** r for r in range(1, self.n_rounds + 1)]
        return [0.0] * len(out) if self.control == "positive" else out

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (targets as a list), for manifests and checkpoints."""
        d = dataclasses.asdict(self)
        d["targets"] = list(self.targets) if self.targets is not None else None
        return d

    def design(self) -> dict[str, Any]:
        """The design factors of this config (:func:`design_keys`)."""
        d = self.to_dict()
        return {k: d[k] for k in design_keys(type(self))}

    def train_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`workbench.lottery.train.train_masked` from this config."""
        return dict(batch_size=self.batch_size, lr=self.lr, lr_schedule=self.lr_schedule,
                    warmup_steps=self.warmup_steps, grad_accum=self.grad_accum,
                    weight_decay=self.weight_decay, autocast=self.autocast,
                    compile=self.compile, betas=(self.beta1, self.beta2),
                    max_grad_norm=self.grad_clip if self.grad_clip > 0 else None,
                    min_lr_ratio=self.min_lr_ratio)

    def tokens_per_step(self, world_size: int = 1) -> int:
        """Training tokens per optimizer step: ``batch_size * seq_len * grad_accum *
        world_size`` (``batch_size`` and ``grad_accum`` are per rank)."""
        return self.batch_size * self.seq_len * self.grad_accum * int(world_size)

    def steps_for(self, world_size: int = 1) -> int:
        """Optimizer steps per round on ``world_size`` ranks: ``steps_per_round``, or
        ``ceil(tokens_per_round / tokens_per_step)`` when ``tokens_per_round`` > 0."""
        if self.tokens_per_round > 0:
            return -(-self.tokens_per_round // self.tokens_per_step(world_size))
        return self.steps_per_round


# ``IMPConfig(importance_kind=...)`` / ``dataclasses.replace(cfg, importance_kind=...)``:
# the TypeError of an unknown keyword, naming the new name.
IMPConfig.__init__ = renamed_keywords(**RENAMED_KEYS)(IMPConfig.__init__)


def _check_corpus(corpus: str) -> None:
    """A ``corpus`` naming an existing folder must be a token shard folder with a manifest
    (a folder that does not exist yet passes: specs validate where the data is absent;
    :func:`workbench.core.shards.open_shards` names it when the run starts)."""
    folder = shard_folder(corpus)
    if folder is not None and folder.is_dir() and not (folder / MANIFEST).is_file():
        try:
            open_shards(folder)
        except ValueError as err:
            raise ValueError(f"corpus: {err}") from None


@renamed_keywords(kind="value_type")
def make_field(default: Any, role: str, help: str, **meta) -> Any:
    """Public form of the field helper, for subclasses that add fields
    (``choices``, ``range``, ``open``, ``integer``, ``scalable``, ``value_type``)."""
    return _f(default, role, help, **meta)


ChoiceSource = tuple | Callable[[], tuple]
