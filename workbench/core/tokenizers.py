"""The byte-level tokenizer of the tiny test models (``tiny-llama``, ``tiny-gpt2``).

:class:`ByteTokenizer` needs no files and no download: ids 0-255 are the UTF-8 bytes,
256-259 are ``<bos>``, ``<eos>``, ``<pad>``, ``<unk>``. :func:`workbench.core.models.load_model`
returns it with the tiny models (whose vocabularies and special ids it defines), and with
``random-smollm2-135m`` when the SmolLM2 tokenizer is not cached;
:func:`workbench.core.zeroshot.hf_tokenizer` converts it to a Hugging Face tokenizer.
"""

from __future__ import annotations

from typing import Any


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
