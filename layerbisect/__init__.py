"""layerbisect: find where and why a quantized LLM checkpoint diverges from its reference."""

from __future__ import annotations

__version__ = "0.1.0"
