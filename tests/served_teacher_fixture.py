"""A real llama.cpp server (llama-cpp-python's OpenAI-compatible one) serving the SmolLM2 GGUF, for tests.

:func:`distill_toolkit.teachers.llama_server.llama_server` starts ``python -m llama_cpp.server`` on
127.0.0.1 at a free port with ``--logits_all true`` and one thread, waits until ``/v1/models`` answers and
stops the process by its PID at the end. llama-cpp-python comes from the ``served`` extra (``make test``
installs it, built with ``CMAKE_ARGS=-DGGML_NATIVE=OFF``).
"""

from __future__ import annotations

from distill_toolkit.teachers.llama_server import MODEL_ALIAS, free_port, llama_server

__all__ = ["MODEL_ALIAS", "free_port", "llama_server", "require_llama_cpp"]


def require_llama_cpp() -> None:
    """Fail (not skip) when llama-cpp-python is missing: these tests are part of the suite."""
    try:
        import llama_cpp  # noqa: F401
        import llama_cpp.server  # noqa: F401
    except ImportError as err:
        import pytest

        pytest.fail(f"llama-cpp-python[server] is not installed ({err}). Fix: `make test` installs the `served` "
                    "extra, or CMAKE_ARGS=-DGGML_NATIVE=OFF pip install 'llama-cpp-python[server]==0.3.36'")
