"""layerbisect: find where and why a quantized LLM checkpoint diverges from its reference."""

from __future__ import annotations

from .version import __version__

__all__ = ["CompareOptions", "__version__", "compare", "open_runner", "run_model"]


def __getattr__(name: str):
    # The API loads torch and pandas; keep `import layerbisect` light until it is used.
    if name in ("compare", "CompareOptions"):
        from . import pipeline

        return getattr(pipeline, name)
    if name in ("run_model", "open_runner"):
        from . import api

        return getattr(api, name)
    raise AttributeError(name)
