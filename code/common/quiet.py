"""Silence one misleading third-party log line (the CPU runs of every stage printed it).

``import peft`` imports bitsandbytes unconditionally (``peft/helpers.py``: ``try: import bitsandbytes``),
so every stage that builds LoRA or loads the sentence encoder (sentence-transformers imports peft) imports
it, even on CPU where nothing is quantized (``--int8``/``--4bit`` are CUDA only: explainer/loading.py).
On a CPU with AVX512-BF16, bitsandbytes' CPU backend then tries to fetch an optional 4-bit kernel from
the Hugging Face hub through the ``kernels`` package and, at import time, logs::

    Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'. ...

The 4-bit CPU kernel is never used here, so the line only reads as a broken install. :func:`install`
adds a filter that drops exactly that record on exactly that logger; every other bitsandbytes message
still shows. It must be in place before bitsandbytes is imported: ``shielded_recrl.common`` installs it
when it is imported, which every stage does before any model library.
"""

from __future__ import annotations

import logging

BNB_CPU_LOGGER = "bitsandbytes.backends.cpu.ops"  # where bitsandbytes logs the line (its module's logger)
BNB_KERNELS_NOTICE = "Failed to load CPU gemm_4bit_forward from kernels-community"


class _DropBnbKernelsNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(BNB_KERNELS_NOTICE)


_FILTER = _DropBnbKernelsNotice()


def install() -> None:
    """Attach the filter to bitsandbytes' CPU-backend logger (idempotent; the logger need not exist yet)."""
    logger = logging.getLogger(BNB_CPU_LOGGER)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
