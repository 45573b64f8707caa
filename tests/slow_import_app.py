"""An actor module whose import takes a minute in Ray's worker processes, and none in the
process that launches it: a deployment of it is still starting (its controller importing this)
when tests/runtime/test_cli.py interrupts ``raygrain up``."""

from __future__ import annotations

import sys
import time

from raygrain.actors import Actor

if sys.argv[0].endswith("default_worker.py"):  # (Ray's worker processes)
    time.sleep(60)


class SlowToImport(Actor[None], name="test.SlowToImport"):
    async def ping(self) -> str:
        return "pong"
