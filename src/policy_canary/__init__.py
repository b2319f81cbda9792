"""policy-canary: ship LLM agent policy changes like production releases."""

from __future__ import annotations

__version__ = "0.1.0"
