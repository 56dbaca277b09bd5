"""Fixtures for tests across hosts: network namespaces that are removed even when a test fails, and a Redis of the
test's own that the namespaces reach through their veth pairs."""

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.hosts import network
from tests.hosts.network import Namespace
from tests.hosts.services import Processes, RedisServer


@pytest.fixture(scope="session")
def namespaces_possible() -> None:
    """Fail at once, saying why, where namespaces cannot be made; remove what dead runs left behind."""
    if reason := network.missing_tools():
        pytest.fail(f"tests marked hosts cannot run here: {reason}")
    network.remove_leftovers()


@pytest.fixture
def make_namespace(namespaces_possible: None) -> Iterator[Callable[[], Namespace]]:
    """Makes namespaces, each with a veth pair to the host; every one of them is removed after the test, whatever
    its outcome, with whatever still runs inside it."""
    made: list[Namespace] = []

    def make() -> Namespace:
        namespace = network.create()
        made.append(namespace)
        return namespace

    yield make
    errors = []
    for namespace in made:
        try:
            network.remove(namespace.name)
        except RuntimeError as error:
            errors.append(str(error))
    assert not errors, f"namespaces left behind: {errors}"


@pytest.fixture
def make_redis(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Starts a Redis of the test's own reachable from the given namespaces; stopped after the test."""
    started: list[RedisServer] = []

    def start(*namespaces: Namespace) -> RedisServer:
        folder = tmp_path / f"redis-{len(started)}"
        folder.mkdir()
        started.append(RedisServer(folder, namespaces))
        return started[-1]

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def processes(make_namespace: Callable[[], Namespace], make_redis: Callable[..., RedisServer],
              tmp_path: Path) -> Iterator[Processes]:
    """Starts the service's processes (logs in the test's tmp_path); every one left is stopped after the test, before
    its Redis and its namespaces go."""
    started = Processes(tmp_path)
    yield started
    started.stop_all()
