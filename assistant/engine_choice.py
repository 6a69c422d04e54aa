"""Pick the serving engine: llama.cpp where it can run this model, else the transformers reference engine."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from urllib.parse import urlsplit

from assistant import gguf_choice
from assistant.backends import Backend, LlamaCppServer, VLLMServer
from assistant.config import Settings
from assistant.engine import BaseEngine, Engine
from assistant.gguf_files import GGUFUnavailable, base_gguf
from assistant.model_files import CACHE_MARKER

log = logging.getLogger(__name__)

INSTALL_HINT = "install it with `make setup` (builds llama-cpp-python, about 3-6 minutes)"


def llama_cpp_installed() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except (ImportError, OSError):  # OSError: the shared library exists but cannot load on this CPU
        return False
    return True


def llama_gguf(settings: Settings, base_model: str, announce=None) -> tuple[Path | None, str | None]:
    """The GGUF llama.cpp would serve for this base model (made once), or why there is none."""
    if not llama_cpp_installed():
        return None, f"llama-cpp-python is not installed; {INSTALL_HINT}"
    model_dir = Path(base_model)
    try:
        return base_gguf(model_dir, serving_type(settings, model_dir, announce), settings.base_gguf), None
    except GGUFUnavailable as exc:
        return None, str(exc)


def serving_type(settings: Settings, model_dir: Path, announce=None) -> str:
    """`gguf_type`, with `auto` measured on this CPU for the bundled model (once, cached beside its GGUFs)."""
    if settings.gguf_type != "auto":
        return settings.gguf_type
    if settings.base_gguf is not None or not (model_dir / CACHE_MARKER).is_file():
        return "F16"  # not converted by Hone: base_gguf uses the explicit file or says why there is none
    threads = settings.threads or os.cpu_count() or 1
    choice = gguf_choice.serving_type(model_dir, lambda t: base_gguf(model_dir, t), threads)
    if announce:
        announce(f"[hone] llama.cpp weights {choice.reason}")
    return choice.gguf_type


def make_engine(settings: Settings, base_model: str, announce=print) -> BaseEngine:
    """`settings.engine`: 'llama.cpp' must work or fail loudly; 'auto' falls back with a message saying why."""
    if settings.engine == "openai":
        return make_remote_engine(settings, base_model, announce)
    if settings.engine != "transformers":
        gguf, reason = llama_gguf(settings, base_model, announce)
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


def make_backend(settings: Settings, base_model: str) -> Backend:
    """The external server `settings.backend` names; fails loudly when it cannot run here."""
    if settings.backend == "vllm":
        name = settings.backend_base_name or base_model
        return VLLMServer(settings.backend_url or "", name, settings.backend_api_key)
    try:
        import llama_cpp.server  # noqa: F401
    except (ImportError, OSError) as exc:
        raise RuntimeError(
            f"ASSISTANT_BACKEND=llama.cpp needs llama-cpp-python's server ({exc}); {INSTALL_HINT}"
        ) from exc
    gguf, reason = llama_gguf(settings, base_model)
    if gguf is None:
        raise RuntimeError(f"ASSISTANT_BACKEND=llama.cpp cannot run: {reason}")
    host, port = "127.0.0.1", 0
    if settings.backend_url:
        address = urlsplit(settings.backend_url)
        host, port = address.hostname or host, address.port or 0
    return LlamaCppServer(
        gguf,
        json.loads((Path(base_model) / "config.json").read_text()),
        settings.home / "backend",
        host=host,
        port=port,
        threads=settings.threads,
        context_tokens=settings.max_context_tokens,
    )


def make_remote_engine(settings: Settings, base_model: str, announce=print) -> BaseEngine:
    from assistant.remote_engine import RemoteEngine

    backend = make_backend(settings, base_model)
    announce(f"[hone] serving through {backend.kind} at {backend.url}")
    return RemoteEngine(
        base_model,
        backend,
        queue_limit=settings.queue_limit,
        concurrency=settings.backend_concurrency,
        api_key=settings.backend_api_key,
    )
