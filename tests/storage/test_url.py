"""Storage URLs in SQLAlchemy's convention (relative ``sqlite:///``, absolute ``sqlite:////``,
options in the query string), bad paths refused when the cluster is built, and the
python://module:factory hook for a deployment's own provider."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from raygrain.actors import ActorId, ConfigurationError
from raygrain.runtime import Cluster
from raygrain.storage import (
    MemoryStorage,
    SqliteStorage,
    absolute_storage_url,
    check_storage_url,
    open_storage,
)
from tests.app import BankAccount


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


async def test_three_slashes_is_relative_to_the_working_directory(tmp_path: Path) -> None:
    storage = open_storage("sqlite:///state.db")
    assert isinstance(storage, SqliteStorage)
    assert storage.path == "state.db"
    async with storage:
        await storage.write(ActorId("A", "a"), b"x", None)
    assert (tmp_path / "state.db").is_file()


async def test_four_slashes_is_absolute(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "abs.db"
    target.parent.mkdir()
    storage = open_storage(f"sqlite:///{target}")  # f"sqlite:///{abs}" has four slashes
    assert isinstance(storage, SqliteStorage)
    assert storage.path == str(target)
    await storage.aclose()


def test_a_relative_path_in_a_subdirectory(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    storage = open_storage("sqlite:///data/app.db")
    assert isinstance(storage, SqliteStorage) and storage.path == "data/app.db"


@pytest.mark.parametrize("url", ["sqlite://", "memory://", "sqlite:///:memory:"])
def test_in_memory_urls(url: str) -> None:
    assert isinstance(open_storage(url), MemoryStorage)


def test_query_options_are_options_not_part_of_the_file_name() -> None:
    storage = open_storage("sqlite:///app.db?durability=normal&busy_timeout=2.5&max_batch=10")
    assert isinstance(storage, SqliteStorage)
    assert storage.path == "app.db"
    assert (storage.durability, storage.busy_timeout, storage.max_batch) == ("normal", 2.5, 10)


def test_a_percent_encoded_path_is_decoded() -> None:
    storage = open_storage("sqlite:///my%20state%3F.db")
    assert isinstance(storage, SqliteStorage) and storage.path == "my state?.db"


def test_relative_urls_are_made_absolute_where_the_cluster_is_launched(tmp_path: Path) -> None:
    made = absolute_storage_url("sqlite:///my state.db?durability=normal")
    assert made == f"sqlite:///{tmp_path}/my%20state.db?durability=normal"
    storage = open_storage(made)
    assert isinstance(storage, SqliteStorage)
    assert (storage.path, storage.durability) == (str(tmp_path / "my state.db"), "normal")
    for unchanged in (f"sqlite:///{tmp_path}/x.db", "memory://", "sqlite://"):
        assert absolute_storage_url(unchanged) == unchanged


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://db/x", "unknown storage URL 'mysql://db/x'"),
        ("state.db", "unknown storage URL 'state.db'"),
        ("", "unknown storage URL ''"),
        ("memory", "unknown storage URL 'memory'"),
        ("memory://x", "write 'memory://' and nothing more"),
        ("memory://?latency=1", "in-memory storage takes no options"),
        ("sqlite://bank.db", r"has a host \('bank.db'\).*'sqlite:///bank.db'"),
        ("sqlite:///dir/", "names a directory"),
        ("sqlite:///x.db?durable=yes", "unknown option 'durable'"),
        ("sqlite:///x.db?max_batch=many", "option max_batch='many' is not a valid value"),
        ("postgresql://u:s3cret@[::1/db", r"'postgresql://u:\*\*\*@\[::1/db' cannot be parsed"),
    ],
    ids=[
        "unknown-scheme",
        "bare-path",
        "empty",
        "memory-no-slashes",
        "memory-with-path",
        "memory-with-options",
        "sqlite-old-two-slashes",
        "sqlite-directory",
        "sqlite-unknown-option",
        "sqlite-bad-value",
        "unclosed-ipv6",
    ],
)
def test_bad_urls_are_refused_naming_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        open_storage(url)


def test_a_missing_directory_is_refused_naming_the_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=f"cannot use {tmp_path}/nowhere/x.db: the dir"):
        open_storage("sqlite:///nowhere/x.db")
    with pytest.raises(ConfigurationError, match="nowhere/x.db: the directory .* does not exist"):
        check_storage_url("sqlite:///nowhere/x.db")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://app:pw@db/shop?pool_size=0", "pool_size must be > 0"),
        ("postgresql://app:pw@db/shop?pool_size=many", "pool_size='many' is not a valid value"),
        ("POSTGRESQL://app:pw@db:notaport/shop", "the port 'notaport' is not a number"),
    ],
    ids=["pool-zero", "pool-text", "port"],
)
def test_check_storage_url_checks_postgresql_options_as_open_storage_does(
    url: str, message: str
) -> None:
    # (Cluster.ray and `raygrain up` check the URL with it before anything starts.)
    with pytest.raises(ConfigurationError, match=message):
        check_storage_url(url)
    with pytest.raises(ConfigurationError, match=message):
        open_storage(url)


def test_a_file_in_place_of_the_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigurationError, match=f"{tmp_path}/file is not a directory"):
        open_storage("sqlite:///file/x.db")


def test_a_directory_in_place_of_the_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.db").mkdir()
    with pytest.raises(ConfigurationError, match="x.db: it is a directory"):
        open_storage("sqlite:///x.db")


def test_an_unwritable_directory_is_refused(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        directory = Path("/proc/sys")  # not writable even by root
        assert not os.access(directory, os.W_OK)
    else:
        directory = tmp_path / "read-only"
        directory.mkdir(mode=0o555)
    with pytest.raises(ConfigurationError, match=f"{directory} is not writable"):
        open_storage(f"sqlite:///{directory}/x.db")


async def test_a_cluster_with_a_bad_path_fails_before_any_call(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="nowhere/bank.db: the directory"):
        Cluster.local(actors=[BankAccount], storage="sqlite:///nowhere/bank.db")
    assert not (tmp_path / "nowhere").exists()


async def test_a_cluster_on_a_relative_url_writes_in_the_working_directory(
    tmp_path: Path,
) -> None:
    async with Cluster.local(actors=[BankAccount], storage="sqlite:///bank.db") as cluster:
        await cluster.get(BankAccount, "alice").deposit(5)
    assert (tmp_path / "bank.db").is_file()
    async with Cluster.local(actors=[BankAccount], storage="sqlite:///bank.db") as cluster:
        assert await cluster.get(BankAccount, "alice").balance() == 5


def test_ray_launch_checks_and_absolutizes_the_urls(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    from raygrain.runtime.ray_host import RayLaunch

    launch = RayLaunch((BankAccount,), 1, "sqlite:///direct.db", "sqlite:///server.db")
    assert launch.storage == f"sqlite:///{tmp_path}/direct.db"
    assert launch.server_storage == f"sqlite:///{tmp_path}/server.db"
    with pytest.raises(ConfigurationError, match="missing/s.db: the directory"):
        RayLaunch((BankAccount,), 1, None, "sqlite:///missing/s.db")


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
