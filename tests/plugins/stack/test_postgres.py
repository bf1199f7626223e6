"""Where the stack's Postgres cluster lives: in the home when the server's user can reach it, else
(as root, from a private checkout) under /var/lib/postgresql with a record in the home."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest

from lakehouse.config import Settings, load_settings
from lakehouse.stack import postgres
from lakehouse.stack.processes import processes_using_home

HOME = Path("/srv/checkout/var")


def _never() -> bool:
    raise AssertionError("the probe must not run here")


# -- the decision --------------------------------------------------------------------------------
def test_a_recorded_place_wins_without_probing() -> None:
    placed = postgres.choose_base(
        HOME, recorded=Path("/x/abc"), home_cluster=False, as_root=True, server_reaches_home=_never
    )
    assert placed.base == Path("/x/abc") and "recorded" in (placed.reason or "")


def test_an_existing_cluster_in_the_home_stays_there() -> None:
    placed = postgres.choose_base(HOME, recorded=None, home_cluster=True, as_root=True, server_reaches_home=_never)
    assert placed == postgres.Placement(HOME / "postgres")


def test_not_root_keeps_the_home_without_probing() -> None:
    placed = postgres.choose_base(HOME, recorded=None, home_cluster=False, as_root=False, server_reaches_home=_never)
    assert placed == postgres.Placement(HOME / "postgres")


def test_root_keeps_the_home_when_the_server_reaches_it() -> None:
    placed = postgres.choose_base(
        HOME, recorded=None, home_cluster=False, as_root=True, server_reaches_home=lambda: True
    )
    assert placed == postgres.Placement(HOME / "postgres")


def test_root_falls_back_when_the_server_cannot_reach_the_home() -> None:
    placed = postgres.choose_base(
        HOME,
        recorded=None,
        home_cluster=False,
        as_root=True,
        server_reaches_home=lambda: False,
        fallback_root=Path("/fb"),
    )
    assert placed.base == postgres.fallback_base(HOME, Path("/fb"))
    assert placed.base.parent == Path("/fb") and len(placed.base.name) == 12
    assert placed.reason == f"the postgres user cannot reach {HOME / 'postgres'}"


def test_the_fallback_is_one_directory_per_home_and_never_in_tmp() -> None:
    assert postgres.fallback_base(HOME) == postgres.fallback_base(Path(str(HOME)))
    assert postgres.fallback_base(HOME) != postgres.fallback_base(HOME.parent / "other")
    assert postgres.fallback_base(HOME).is_relative_to(postgres.FALLBACK_ROOT)
    assert not postgres.FALLBACK_ROOT.is_relative_to(tempfile.gettempdir())


@pytest.mark.parametrize(
    ("mode", "owner", "group", "uid", "gids", "expected"),
    [
        (0o700, 5, 5, 5, {5}, True),  # the owner
        (0o700, 1, 1, 5, {5}, False),  # a stranger, no bits for others
        (0o710, 1, 5, 5, {5}, True),  # through the group
        (0o701, 1, 1, 5, {5}, True),  # through "others"
        (0o071, 5, 5, 5, {5}, False),  # the owner's own bits count, not the others'
        (0o700, 1, 1, 0, {0}, True),  # root passes everywhere
    ],
)
def test_traversable(mode: int, owner: int, group: int, uid: int, gids: set[int], expected: bool) -> None:
    assert postgres.traversable(stat.S_IFDIR | mode, owner, group, uid, gids) is expected


def test_blocked_at_names_the_private_directory() -> None:
    top = Path(tempfile.mkdtemp(prefix="lakehouse-blocked-"))  # not tmp_path: pytest's own is 0700
    try:
        top.chmod(0o755)
        private = top / "private"
        (private / "checkout").mkdir(parents=True)
        private.chmod(0o700)
        stranger = 54321  # owns nothing here
        assert postgres.blocked_at(private / "checkout" / "var" / "postgres", stranger, {stranger}) == private
        private.chmod(0o755)
        assert postgres.blocked_at(private / "checkout" / "var" / "postgres", stranger, {stranger}) is None
    finally:
        shutil.rmtree(top)


# -- the record ----------------------------------------------------------------------------------
def _settings_for(monkeypatch: pytest.MonkeyPatch, home: Path, port: int = 5433) -> Settings:
    """Settings of another home and port; monkeypatch gives the session's environment back."""
    monkeypatch.setenv("LAKEHOUSE_HOME", str(home))
    monkeypatch.setenv("LAKEHOUSE_PG_PORT", str(port))
    return load_settings()


def test_status_of_a_fresh_home_creates_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings_for(monkeypatch, tmp_path / "home")
    assert postgres.data_dir(settings) == tmp_path / "home" / "postgres" / "data"
    assert postgres.is_running(settings) is False and postgres.stop(settings) is False
    assert not (tmp_path / "home").exists()


def test_the_record_moves_every_caller_to_the_recorded_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings_for(monkeypatch, tmp_path / "home")
    (tmp_path / "home" / "postgres").mkdir(parents=True)
    (tmp_path / "home" / "postgres" / "location").write_text(f"{tmp_path / 'elsewhere'}\n")
    assert postgres.cluster_base(settings) == tmp_path / "elsewhere"
    assert postgres.data_dir(settings) == tmp_path / "elsewhere" / "data"
    assert postgres.is_running(settings) is False


# -- the real thing, as root from a private directory ---------------------------------------------
def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture
def private_home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """A home inside a 0700 directory (like /root or ``mktemp -d``) on a port of its own; the
    cluster, wherever it went, and the directory are removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("the server runs as user postgres only when we are root; not root here")
    if postgres.postgres_bindir() is None:
        pytest.skip("no Postgres server installed")
    port = 25533 + int(os.environ.get("LAKEHOUSE_TEST_PORT_OFFSET", "0"))
    if not _free(port):
        pytest.skip(f"port {port} is taken (set LAKEHOUSE_TEST_PORT_OFFSET)")
    private = Path(tempfile.mkdtemp(prefix="lakehouse-private-"))
    assert stat.S_IMODE(private.stat().st_mode) == 0o700
    settings = _settings_for(monkeypatch, private / "p" / "var", port)
    try:
        yield settings
    finally:
        postgres.remove_cluster(settings)
        shutil.rmtree(private, ignore_errors=True)


@pytest.mark.integration
def test_root_runs_postgres_from_a_private_checkout(private_home: Settings) -> None:
    settings = private_home
    fallback = postgres.fallback_base(settings.home)
    assert not fallback.exists(), f"{fallback} is left from an earlier run"
    try:
        assert postgres.start(settings) is True
        assert postgres.data_dir(settings) == fallback / "data"
        assert (settings.home / "postgres" / "location").read_text().strip() == str(fallback)
        assert not (fallback / "pwfile").exists() and (fallback / "server.log").exists()
        assert processes_using_home(settings.home), "the server's command line should name its home"
        with psycopg2.connect(settings.dsn("postgres"), connect_timeout=5) as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
        assert postgres.is_running(settings) is True
        assert postgres.stop(settings) is True and postgres.is_running(settings) is False
        assert (fallback / "data" / "PG_VERSION").exists(), "a stop keeps the data"
        # the second up finds the same cluster through the record
        assert postgres.ensure_cluster(settings) == fallback / "data"
        assert postgres.start(settings) is True and postgres.stop(settings) is True
    finally:
        assert postgres.remove_cluster(settings) is True
    assert not fallback.exists() and not (settings.home / "postgres" / "location").exists()
    assert processes_using_home(settings.home) == []


@pytest.mark.integration
def test_the_probe_asks_the_kernel_as_user_postgres() -> None:
    """What decides between the home and the fallback: a directory the server's user owns under a
    0755 parent is reachable (the test session's own layout), the same under a 0700 one is not."""
    if os.geteuid() != 0:
        pytest.skip("the server runs as user postgres only when we are root; not root here")
    top = Path(tempfile.mkdtemp(prefix="lakehouse-reach-"))
    try:
        (top / "open").mkdir(mode=0o755)
        top.chmod(0o755)
        assert postgres._server_reaches(top / "open") is False  # owned by root, not writable for postgres
        postgres._chown_for_server(top / "open")
        assert postgres._server_reaches(top / "open") is True
        top.chmod(0o700)
        assert postgres._server_reaches(top / "open") is False
    finally:
        shutil.rmtree(top, ignore_errors=True)


@pytest.mark.integration
def test_root_stops_with_what_to_change_when_no_place_is_reachable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither the home nor the fallback reachable: one line naming the directory to open."""
    if os.geteuid() != 0:
        pytest.skip("the server runs as user postgres only when we are root; not root here")
    if postgres.postgres_bindir() is None:
        pytest.skip("no Postgres server installed")
    private = Path(tempfile.mkdtemp(prefix="lakehouse-private-"))
    try:
        monkeypatch.setattr(postgres, "FALLBACK_ROOT", private / "fallback")
        settings = _settings_for(monkeypatch, private / "p" / "var")
        with pytest.raises(RuntimeError) as caught:
            postgres.ensure_cluster(settings)
        message = str(caught.value)
        assert "\n" not in message and f"chmod o+x {private}," in message and "LAKEHOUSE_HOME" in message
        assert not (settings.home / "postgres" / "location").exists()
        assert postgres.is_running(settings) is False
    finally:
        shutil.rmtree(private, ignore_errors=True)
