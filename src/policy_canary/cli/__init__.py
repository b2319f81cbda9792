"""The ``policy-canary`` command line: a thin shell over the library."""

from __future__ import annotations

from policy_canary.cli._app import app, main

__all__ = ["app", "main"]
