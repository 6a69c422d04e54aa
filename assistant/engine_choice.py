"""Pick the serving engine: llama.cpp where it can run this model, else the transformers reference engine."""

from __future__ import annotations

import logging
from pathlib import Path

from assistant.config import Settings
from assistant.engine import BaseEngine, Engine
from assistant.gguf_files import GGUFUnavailable, base_gguf

log = logging.getLogger(__name__)

INSTALL_HINT = "install it with `make setup` (builds llama-cpp-python, about 3-6 minutes)"


def llama_cpp_installed() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except (ImportError, OSError):  # OSError: the shared library exists but cannot load on this CPU
        return False
    return True


def llama_gguf(settings: Settings, base_model: str) -> tuple[Path | None, str | None]:
    """The GGUF llama.cpp would serve for this base model (made once), or why there is none."""
    if not llama_cpp_installed():
        return None, f"llama-cpp-python is not installed; {INSTALL_HINT}"
    try:
        return base_gguf(Path(base_model), settings.gguf_type, settings.base_gguf), None
    except GGUFUnavailable as exc:
        return None, str(exc)


def make_engine(settings: Settings, base_model: str, announce=print) -> BaseEngine:
    """`settings.engine`: 'llama.cpp' must work or fail loudly; 'auto' falls back with a message saying why."""
    if settings.engine != "transformers":
        gguf, reason = llama_gguf(settings, base_model)
        if gguf is not None:
            from assistant.llama_engine import LlamaEngine

            announce(f"[hone] serving with llama.cpp ({gguf.name}, up to {settings.serve_batch} answers at once)")
            return LlamaEngine(
                base_model,
                gguf,
                threads=settings.threads,
                queue_limit=settings.queue_limit,
                max_batch=settings.serve_batch,
                kv_tokens=settings.serve_kv_tokens,
                max_context_tokens=settings.max_context_tokens,
            )
        if settings.engine == "llama.cpp":
            raise RuntimeError(f"ASSISTANT_ENGINE=llama.cpp cannot run: {reason}")
        announce(f"[hone] serving with transformers (slower): {reason}")
    return Engine(base_model, dtype=settings.dtype, threads=settings.threads, queue_limit=settings.queue_limit)
