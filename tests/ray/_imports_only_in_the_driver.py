"""An actor module that imports in the test's own process and fails to in Ray's workers (as a
module whose dependency is missing on the nodes would): see test_deployments."""

import os

from raygrain import Actor

if os.environ.get("RAYGRAIN_TEST_DRIVER_ONLY") != "1":
    raise ImportError("driver_only_dependency is not installed here")


class DriverOnly(Actor[int], name="test.deployments.DriverOnly"):
    async def add(self, n: int) -> int:
        return n
