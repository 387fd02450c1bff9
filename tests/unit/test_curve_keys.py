"""CURVE keys (featurestore/security/curve.py): the directory `featurestore keys generate`
writes, every way a key file can be wrong (a ConfigError naming the file), and the ZAP
domains on real in-process ZeroMQ sockets: the back end takes only the internal key, the
front end takes the internal key and clients/*.key, re-read when that directory changes."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from featurestore.cli import main as featurestore_cli
from featurestore.config import ConfigError, Settings
from featurestore.exitcodes import EXIT_CONFIG, EXIT_FAILURE
from featurestore.security import curve
from featurestore.security.curve import (
    CurveClient,
    Domain,
    KeyFileError,
    ZapServer,
    generate_keys,
    internal_keys,
    load_client_keys,
    server_keys,
)

HANDSHAKE_TIMEOUT_MS = 5000
OUTCOMES = {
    zmq.EVENT_HANDSHAKE_SUCCEEDED: "accepted",
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "refused",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "refused",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "refused",
}


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    directory = tmp_path / "keys"
    generate_keys(directory)
    return directory


def settings_for(directory: Path) -> Settings:
    return Settings.from_env({"ZMQ_CURVE_KEYS_DIR": str(directory)})


# ------------------------------------------------------------------------------ layout
def test_generate_writes_the_layout_private_whatever_the_umask(tmp_path: Path) -> None:
    # Given the most permissive umask
    previous = os.umask(0)
    try:
        # When the keys are generated
        written = generate_keys(tmp_path / "keys")
    finally:
        os.umask(previous)

    # Then the server, internal and default client pairs exist, secrets 0600, dirs 0700
    root = tmp_path / "keys"
    names = sorted(str(p.relative_to(root)) for p in written)
    assert names == sorted(
        [
            "server.key",
            "server.key_secret",
            "internal.key",
            "internal.key_secret",
            "clients/client.key",
            "clients/client.key_secret",
        ]
    )
    for path in written:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o600 if path.name.endswith(".key_secret") else 0o644), path
    for directory in (root, root / "clients"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert not list(root.rglob("*.tmp"))
    # and every pair is distinct and loads back
    publics = {curve.read_public(p) for p in written if p.suffix == ".key"}
    assert len(publics) == 3


def test_generate_refuses_to_replace_keys_unless_forced(keys: Path) -> None:
    before = (keys / "server.key_secret").read_bytes()
    with pytest.raises(FileExistsError, match="--force"):
        generate_keys(keys)
    assert (keys / "server.key_secret").read_bytes() == before
    generate_keys(keys, force=True)
    assert (keys / "server.key_secret").read_bytes() != before


def test_add_client_writes_one_more_pair(keys: Path) -> None:
    written = curve.add_client(keys, "model-a")
    assert [p.name for p in written] == ["model-a.key", "model-a.key_secret"]
    loaded = load_client_keys(keys, "model-a")
    assert loaded.server_key == curve.read_public(keys / "server.key")
    with pytest.raises(FileExistsError):
        curve.add_client(keys, "model-a")
    with pytest.raises(ValueError, match="client name"):
        curve.add_client(keys, "../escape")


def test_add_client_needs_the_stack_keys_first(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="keys generate"):
        curve.add_client(tmp_path, "model-a")


def test_generated_files_are_pyzmq_certificates(keys: Path) -> None:
    import zmq.auth

    public, secret = zmq.auth.load_certificate(keys / "internal.key_secret")
    assert (public, secret) == curve.read_pair(keys / "internal.key_secret")
    assert zmq.auth.load_certificate(keys / "internal.key")[1] is None


def test_secret_keys_never_appear_in_a_repr(keys: Path) -> None:
    client = load_client_keys(keys)
    assert client.secret_key.decode() not in repr(client)
    server = server_keys(settings_for(keys))
    assert server is not None
    assert server.secret_key.decode() not in repr(server)


# ---------------------------------------------------------------------------- loading
def test_no_keys_dir_means_curve_off() -> None:
    settings = Settings.from_env({})
    assert internal_keys(settings) is None
    assert server_keys(settings) is None
    context = zmq.Context()
    try:
        zap = ZapServer.start(context, settings)
        assert not zap.enabled
        zap.stop()
    finally:
        context.term()


def test_a_missing_directory_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^ZMQ_CURVE_KEYS_DIR: .*nothere: no such directory"):
        internal_keys(settings_for(tmp_path / "nothere"))


@pytest.mark.parametrize(
    ("removed", "loader"),
    [
        ("server.key", internal_keys),
        ("internal.key_secret", internal_keys),
        ("server.key_secret", server_keys),
        ("internal.key", server_keys),
    ],
)
def test_a_missing_key_file_is_named(keys: Path, removed: str, loader) -> None:
    (keys / removed).unlink()
    with pytest.raises(KeyFileError) as caught:
        loader(settings_for(keys))
    assert str(caught.value) == f"ZMQ_CURVE_KEYS_DIR: {keys / removed}: missing"
    assert isinstance(caught.value, ConfigError)


def test_an_unreadable_key_file_is_named(keys: Path) -> None:
    (keys / "internal.key_secret").unlink()
    (keys / "internal.key_secret").mkdir()  # unreadable as a file, even for root
    with pytest.raises(KeyFileError, match=r"internal\.key_secret: unreadable"):
        internal_keys(settings_for(keys))


def _rewrite(path: Path, old: str, new: str) -> None:
    path.write_text(path.read_text().replace(old, new))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p: p.write_text("garbage\n"), "no public-key line"),
        (lambda p: p.write_bytes(b"\xff\xfe\x00"), "no public-key line"),
        (lambda p: _rewrite(p, 'public-key = "', 'public-key = "x'), "public-key is not a 40"),
        (lambda p: _rewrite(p, 'secret-key = "', 'secret-key = "~'), "secret-key is not a 40"),
        (lambda p: _rewrite(p, "secret-key", "secret-kez"), "no secret-key line"),
    ],
    ids=["not-a-certificate", "binary", "bad-public", "bad-secret", "no-secret"],
)
def test_a_malformed_key_file_is_named(keys: Path, change, message: str) -> None:
    path = keys / "internal.key_secret"
    change(path)
    with pytest.raises(KeyFileError) as caught:
        internal_keys(settings_for(keys))
    assert str(caught.value).startswith(f"ZMQ_CURVE_KEYS_DIR: {path}: ")
    assert message in str(caught.value)


def test_a_secret_that_does_not_match_its_public_key_is_refused(keys: Path) -> None:
    other = curve.read_pair(keys / "server.key_secret")[1].decode()
    mine = curve.read_pair(keys / "internal.key_secret")[1].decode()
    _rewrite(keys / "internal.key_secret", mine, other)
    with pytest.raises(KeyFileError, match="does not belong to its public-key"):
        internal_keys(settings_for(keys))


def test_a_malformed_client_key_stops_the_server_at_start(keys: Path) -> None:
    (keys / "clients" / "broken.key").write_text("nothing here\n")
    with pytest.raises(KeyFileError, match=r"clients/broken\.key: no public-key line"):
        server_keys(settings_for(keys))


def test_load_client_keys_names_the_missing_file(keys: Path) -> None:
    with pytest.raises(KeyFileError, match=r"clients/nobody\.key_secret: missing"):
        load_client_keys(keys, "nobody")


# ------------------------------------------------------------------- ZAP on real sockets
@pytest.fixture
def server(keys: Path) -> Iterator[tuple[zmq.Context, dict[Domain, str]]]:
    """A context with the ZAP authenticator and one bound ROUTER per domain."""
    context = zmq.Context()
    zap = ZapServer.start(context, settings_for(keys))
    sockets, endpoints = [], {}
    try:
        for domain in Domain:
            socket = context.socket(zmq.ROUTER)
            socket.setsockopt(zmq.LINGER, 0)
            zap.secure(socket, domain)
            port = socket.bind_to_random_port("tcp://127.0.0.1")
            sockets.append(socket)
            endpoints[domain] = f"tcp://127.0.0.1:{port}"
        yield context, endpoints
    finally:
        for socket in sockets:
            socket.close(linger=0)
        zap.stop()
        context.term()


def handshake(context: zmq.Context, endpoint: str, keys: CurveClient | None) -> str:
    """'accepted' or 'refused': how the server answered a DEALER's handshake."""
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    curve.secure_client(socket, keys)
    monitor = socket.get_monitor_socket()
    try:
        socket.connect(endpoint)
        while monitor.poll(HANDSHAKE_TIMEOUT_MS):
            event = recv_monitor_message(monitor)["event"]
            if event in OUTCOMES:
                return OUTCOMES[event]
        raise AssertionError(f"no handshake outcome within {HANDSHAKE_TIMEOUT_MS} ms")
    finally:
        socket.disable_monitor()
        monitor.close(linger=0)
        socket.close(linger=0)


def stranger(keys: Path) -> CurveClient:
    public, secret = zmq.curve_keypair()
    return CurveClient(curve.read_public(keys / "server.key"), public, secret)


def test_internal_domains_take_only_the_internal_key(keys: Path, server) -> None:
    context, endpoints = server
    internal = internal_keys(settings_for(keys))
    client = load_client_keys(keys)
    for domain in (Domain.BACKEND, Domain.VECTORS):
        assert handshake(context, endpoints[domain], internal) == "accepted"
        assert handshake(context, endpoints[domain], client) == "refused"
        assert handshake(context, endpoints[domain], stranger(keys)) == "refused"
        assert handshake(context, endpoints[domain], None) == "refused"


def test_public_domains_take_internal_and_client_keys(keys: Path, server) -> None:
    context, endpoints = server
    for domain in (Domain.FRONTEND, Domain.REPORTS):
        assert handshake(context, endpoints[domain], internal_keys(settings_for(keys))) == (
            "accepted"
        )
        assert handshake(context, endpoints[domain], load_client_keys(keys)) == "accepted"
        assert handshake(context, endpoints[domain], stranger(keys)) == "refused"
        assert handshake(context, endpoints[domain], None) == "refused"


def test_client_keys_are_re_read_without_restart(keys: Path, server) -> None:
    context, endpoints = server
    # Given a client whose key the server has never seen
    with pytest.raises(KeyFileError):
        load_client_keys(keys, "late")
    curve.add_client(keys, "late")
    late = load_client_keys(keys, "late")
    # Then it is accepted as soon as its key is in clients/
    assert handshake(context, endpoints[Domain.FRONTEND], late) == "accepted"
    # And refused again once its key is removed
    (keys / "clients" / "late.key").unlink()
    assert handshake(context, endpoints[Domain.FRONTEND], late) == "refused"
    # while a malformed file dropped in at run time is skipped, not fatal
    (keys / "clients" / "broken.key").write_text("nothing\n")
    assert handshake(context, endpoints[Domain.FRONTEND], load_client_keys(keys)) == "accepted"


def test_a_server_with_the_wrong_server_key_is_not_trusted(keys: Path, server) -> None:
    context, endpoints = server
    client = load_client_keys(keys)
    impostor = CurveClient(zmq.curve_keypair()[0], client.public_key, client.secret_key)
    assert handshake(context, endpoints[Domain.FRONTEND], impostor) != "accepted"


# -------------------------------------------------------------------------------- CLI
def test_cli_generate_and_add_a_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.delenv("ZMQ_CURVE_KEYS_DIR", raising=False)
    directory = tmp_path / "keys"
    assert featurestore_cli(["keys", "generate", "--dir", str(directory)]) == 0
    out = capsys.readouterr().out
    assert str(directory / "server.key_secret") in out
    assert "clients/NAME.key_secret" in out
    assert featurestore_cli(["keys", "generate", "--dir", str(directory)]) == EXIT_FAILURE
    assert "--force" in capsys.readouterr().err
    monkeypatch.setenv("ZMQ_CURVE_KEYS_DIR", str(directory))  # the default --dir
    assert featurestore_cli(["keys", "generate", "--client", "model-b"]) == 0
    assert load_client_keys(directory, "model-b").public_key


def test_cli_generate_needs_a_directory(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.delenv("ZMQ_CURVE_KEYS_DIR", raising=False)
    assert featurestore_cli(["keys", "generate"]) == EXIT_CONFIG
    assert "--dir" in capsys.readouterr().err
