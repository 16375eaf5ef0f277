"""Integrations with training frameworks (each imports its framework only when used).

* ``prunekit.integrations.hf.PruningCallback`` — Hugging Face ``transformers`` ``Trainer``.
"""

__all__: list[str] = []
