"""The HTTP surface: a versioned JSON API, OFREP evaluation, bearer tokens (``[server]`` extra).

The server holds no logic of its own: each endpoint parses, authorises, calls the same
library function as the CLI command of the same name, and renders its result.
"""

from __future__ import annotations

from policy_canary.server._app import OPENAPI_URL, create_app
from policy_canary.server._controller import ControllerOptions, ServedController
from policy_canary.server._run import serve
from policy_canary.server._state import Limits

__all__ = ["OPENAPI_URL", "ControllerOptions", "Limits", "ServedController", "create_app", "serve"]
