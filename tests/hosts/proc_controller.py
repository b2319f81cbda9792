"""A controller process on a test host: ``Controller.run()``, every tick reported as JSON.

``python proc_controller.py CONFIG_JSON``; CONFIG has ``name`` (the lock holder),
``db_url``, ``interval`` and ``lease_ttl`` (seconds) and ``lifetime``. One ``tick`` line per
tick: whether it acted, and each transition it recorded (rollout, action, revision). Stops
by itself after ``lifetime`` seconds, or on SIGTERM.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from datetime import timedelta
from typing import Any

from policy_canary.controller import Controller, TickReport
from policy_canary.store import Store


def main(config: dict[str, Any]) -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    lifetime = threading.Timer(float(config["lifetime"]), stop.set)
    lifetime.daemon = True  # it must not keep a stopped controller alive
    lifetime.start()
    store = Store.open(config["db_url"], migrate=False)
    controller = Controller(
        store, holder=config["name"], lease_ttl=timedelta(seconds=float(config["lease_ttl"]))
    )

    def report(tick: TickReport) -> None:
        moves = [
            {"rollout": o.rollout_id, "action": o.action.kind.value, "revision": o.revision}
            for o in tick.outcomes
            if o.recorded and o.action is not None
        ]
        doc = {"kind": "tick", "at": time.time(), "acted": tick.acted, "moves": moves}
        print(json.dumps(doc), flush=True)

    print(json.dumps({"kind": "started", "at": time.time()}), flush=True)
    controller.run(interval=timedelta(seconds=float(config["interval"])), stop=stop, on_tick=report)
    store.close()
    print(json.dumps({"kind": "final", "at": time.time()}), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
