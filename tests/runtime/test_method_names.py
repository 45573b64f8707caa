"""The method names users reach for first are theirs: the base class keeps its helpers on
``self.context`` and ``self.actors`` (issue 13, part 5)."""

from __future__ import annotations

from typing import Any

import pytest

from raygrain.actors import RESERVED, Actor, ActorRef, ConfigurationError, actor_methods
from raygrain.runtime import Cluster
from tests.app import Preferences

USERS_NAMES = ["get", "save", "key", "id", "items", "update", "delete", "value", "clear_state"]


def _actor_with_method(name: str) -> type[Actor[None]]:
    namespace: dict[str, Any] = {"Actor": Actor}
    exec(
        f"class A(Actor[None]):\n    async def {name}(self) -> int:\n        return 1\n", namespace
    )
    return namespace["A"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("name", USERS_NAMES)
def test_a_users_name_is_a_callable_method(name: str) -> None:
    assert name in actor_methods(_actor_with_method(name))


def test_the_reserved_list_is_short_and_refused() -> None:
    assert {
        "state",
        "context",
        "actors",
        "timers",
        "reminders",
        "on_activate",
        "on_deactivate",
        "on_reminder",
        "streams",
        "on_stream_event",
        "actor_id",
        "with_timeout",
        "invoke",
    } == RESERVED
    hooks = {"on_activate", "on_deactivate", "on_reminder", "on_stream_event"}
    for name in sorted(RESERVED - hooks):
        with pytest.raises(ConfigurationError, match=f"{name}: the name is reserved"):
            _actor_with_method(name)


async def test_users_names_work_through_a_cluster(any_cluster: Cluster, key: Any) -> None:
    settings = any_cluster.get(Preferences, key("a"))
    await settings.save("width", 3)
    await settings.update({"height": 4, "depth": 5})
    assert await settings.get("width") == 3
    assert await settings.items() == [("depth", 5), ("height", 4), ("width", 3)]
    assert await settings.delete("depth") is True
    assert await settings.value() == 7
    assert await settings.key() == key("a")
    assert await settings.id() == f"test.Preferences/{key('a')}"
    assert await settings.with_timeout(5).get("height") == 4
    myself = await settings.myself()  # Actor.with_timeout: a reference to the actor itself
    assert isinstance(myself, ActorRef) and myself == settings

    other = any_cluster.get(Preferences, key("b"))
    assert await other.copy_from(key("a"), "width") == 3  # calls a's `get` via self.actors
    assert await other.items() == [("width", 3)]
