"""An agent process on the remote SDK, for the three-process test (run as a script).

    python _agent.py URL TOKEN DIR

Routes users of ``support-agent`` without pause; the candidate's replies trip the
``critical`` safety flag (the regression). Appends every acknowledged decision id to
DIR/acked (one per line) and, the first time ``route()`` answers stable with no rollout
after having served the candidate, writes the wall time to DIR/stable. Stops when DIR/stop
appears, closes the canary (which flushes) and prints its stats as JSON.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from policy_canary import Canary


def main(url: str, token: str, where: Path) -> None:
    canary = Canary.connect(url, token=token, refresh_interval=0.5, flush_interval=0.05)
    gate = canary.gate("support-agent")
    seen_candidate = False
    i = 0
    with (where / "acked").open("a") as acked:
        while not (where / "stop").exists():
            decision = gate.route(f"user-{i % 5000}")
            if decision.arm.value == "candidate":
                seen_candidate = True
                decision.record(latency_ms=80.0, safety_flags=["critical"])
            else:
                decision.record(latency_ms=100.0)
                first = seen_candidate and not (where / "stable").exists()
                if first and decision.rollout_id is None:
                    (where / "stable").write_text(repr(time.time()))
            acked.write(decision.decision_id + "\n")
            i += 1
            if i % 50 == 0:
                acked.flush()
                time.sleep(0.005)
    canary.close()
    stats = canary.stats()
    print(
        json.dumps(
            {
                "written": stats.written,
                "dropped": stats.dropped,
                "buffered": stats.buffered,
                "recorded": i,
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], Path(sys.argv[3]))
