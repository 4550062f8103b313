"""GPT-2's byte-level alphabet: the character each byte is spelled with in a byte-level BPE
vocabulary (GPT-2, SmolLM2, Llama 3, Qwen 2).

Used where token text meets bytes: ``dynamo.llm.ascii_encoder`` spells a pre-token's bytes the
way the vocabulary does before the BPE model runs on it, and ``dynamo.models.gguf_to_hf`` spells a
GGUF vocabulary's tokens when it writes a ``tokenizer.json``.
"""

from __future__ import annotations


def byte_level_alphabet() -> dict[int, str]:
    """Byte -> character: printable Latin-1 bytes stand for themselves, the others (controls,
    space, ...) for the characters from U+0100 on, in byte order."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping
