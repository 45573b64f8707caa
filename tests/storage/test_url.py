"""Storage URLs, including the python://module:factory hook for a deployment's own provider."""

from __future__ import annotations

import pytest

from raygrain.actors import ConfigurationError
from raygrain.storage import MemoryStorage, open_storage


def test_python_factory_url_builds_the_provider() -> None:
    assert isinstance(
        open_storage("python://raygrain.storage._memory:MemoryStorage"), MemoryStorage
    )


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("python://no_such_module:make", "No module named 'no_such_module'"),
        ("python://raygrain.storage._memory", "expected python://module:factory"),
        ("python://builtins:dict", "does not implement the StorageProvider protocol"),
    ],
    ids=["missing-module", "no-factory", "not-a-provider"],
)
def test_bad_python_factory_url(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        open_storage(url)
