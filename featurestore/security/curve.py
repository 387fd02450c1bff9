"""ZeroMQ CURVE: the key directory, loading keys, securing sockets, the ZAP authenticator.

When ZMQ_CURVE_KEYS_DIR is set, every ZeroMQ socket of the stack (tcp and ipc alike) is
encrypted and authenticated with CURVE. The directory, made by `featurestore keys generate`:

    server.key               public key of every bound socket (broker, drift)
    server.key_secret        its secret: the broker's and drift's host only
    internal.key             public key of the stack's own processes
    internal.key_secret      its secret: every host that runs a role (worker, gateway, drift)
    clients/NAME.key         public key of an authorised ZeroMQ client
    clients/NAME.key_secret  that client's secret: move it to the client's host

Key files are pyzmq/czmq certificates (`public-key = "<Z85>"`, `secret-key = "<Z85>"`), so
keys made by other ZeroMQ tools can be dropped in. Trust is split by ZAP domain: the back end
and the drift SUB accept only the internal key (a peer that could register as a worker would
receive ingests); the front end and the drift PUB accept the internal key and every
clients/*.key, a directory re-read when it changes (add or remove a client without restart).
"""

from __future__ import annotations

import datetime
import logging
import os
import re
import stat
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import zmq
import zmq.auth.thread

from featurestore.config import ConfigError, Settings

log = logging.getLogger("curve")

SERVER = "server"
INTERNAL = "internal"
CLIENTS_DIR = "clients"
DEFAULT_CLIENT = "client"
PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
Z85_KEY = re.compile(rb"^[0-9a-zA-Z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}$")
_CERTIFICATE_LINE = re.compile(rb"^\s*(public|secret)-key\s*=\s*[\"']?([^\"'\s]*)[\"']?\s*$")
CLIENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
DIR_MODE = 0o700
SECRET_MODE = 0o600
PUBLIC_MODE = 0o644
MAX_REFUSED_TRACKED = 10_000  # refused keys counted for the log (a bounded table)


class Domain(StrEnum):
    """The ZAP domain of each bound socket: who may connect to it."""

    FRONTEND = "featurestore.frontend"  # clients and the gateway
    BACKEND = "featurestore.backend"  # compute workers, the drift process
    VECTORS = "featurestore.vectors"  # workers' vector publishers
    REPORTS = "featurestore.reports"  # report and alert subscribers


INTERNAL_ONLY = frozenset({Domain.BACKEND, Domain.VECTORS})


class KeyFileError(ConfigError):
    """A key file is missing, unreadable or malformed; the message names it."""


# ------------------------------------------------------------------------- key files
def public_path(directory: Path, name: str) -> Path:
    return directory / f"{name}{PUBLIC_SUFFIX}"


def secret_path(directory: Path, name: str) -> Path:
    return directory / f"{name}{SECRET_SUFFIX}"


def read_certificate(path: Path) -> tuple[bytes, bytes | None]:
    """(public key, secret key or None) of a certificate file, both Z85; KeyFileError naming
    the file when it is missing, unreadable or malformed."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"{path}: missing") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: unreadable: {exc.strerror or exc}") from None
    found: dict[bytes, bytes] = {}
    for line in raw.splitlines():
        match = _CERTIFICATE_LINE.match(line)
        if match:
            found[match.group(1)] = match.group(2)
    public, secret = found.get(b"public"), found.get(b"secret")
    if public is None:
        raise KeyFileError(f"{path}: no public-key line (not a CURVE certificate)")
    for kind, key in ((b"public", public), (b"secret", secret)):
        if key is not None and not Z85_KEY.match(key):
            raise KeyFileError(f"{path}: {kind.decode()}-key is not a 40-character Z85 key")
    if secret is not None and zmq.curve_public(secret) != public:
        raise KeyFileError(f"{path}: secret-key does not belong to its public-key")
    return public, secret


def read_public(path: Path) -> bytes:
    return read_certificate(path)[0]


def read_pair(path: Path) -> tuple[bytes, bytes]:
    """(public, secret) from a secret certificate; warns when others may read it."""
    public, secret = read_certificate(path)
    if secret is None:
        raise KeyFileError(f"{path}: no secret-key line (is this the public .key file?)")
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s is readable by others (mode %o): chmod 600 it", path, mode & 0o777)
    return public, secret


def read_client_keys(directory: Path) -> dict[Path, bytes]:
    """The public keys of clients/*.key, by file; an absent directory holds none."""
    if not directory.is_dir():
        return {}
    return {path: read_public(path) for path in sorted(directory.glob(f"*{PUBLIC_SUFFIX}"))}


def _keys_dir(settings: Settings) -> Path | None:
    if not settings.zmq_curve_keys_dir:
        return None
    directory = Path(settings.zmq_curve_keys_dir).expanduser()
    if not directory.is_dir():
        raise KeyFileError(
            f"ZMQ_CURVE_KEYS_DIR: {directory}: no such directory "
            f"(make the keys with `featurestore keys generate --dir {directory}`)"
        )
    return directory


# ---------------------------------------------------------------------- client side
@dataclass(frozen=True)
class CurveClient:
    """The keys a connecting socket presents: the server's public key and its own pair."""

    server_key: bytes
    public_key: bytes
    secret_key: bytes

    def apply(self, socket: zmq.Socket) -> None:
        """Make `socket` a CURVE client; call before `connect`."""
        socket.setsockopt(zmq.CURVE_SERVERKEY, self.server_key)
        socket.setsockopt(zmq.CURVE_PUBLICKEY, self.public_key)
        socket.setsockopt(zmq.CURVE_SECRETKEY, self.secret_key)

    def __repr__(self) -> str:  # never print a secret key
        return f"CurveClient(public_key={self.public_key.decode()!r})"


def secure_client(socket: zmq.Socket, curve: CurveClient | None) -> None:
    """Apply `curve` to a connecting socket; nothing when CURVE is off (None)."""
    if curve is not None:
        curve.apply(socket)


def load_client_keys(directory: str | os.PathLike, name: str = DEFAULT_CLIENT) -> CurveClient:
    """A ZeroMQ client's keys from a key directory: DIR/server.key and
    DIR/clients/NAME.key_secret (the layout `featurestore keys generate` writes)."""
    root = Path(directory).expanduser()
    public, secret = read_pair(secret_path(root / CLIENTS_DIR, name))
    return CurveClient(read_public(public_path(root, SERVER)), public, secret)


def internal_keys(settings: Settings) -> CurveClient | None:
    """The keys of the stack's own connecting sockets, or None when CURVE is off."""
    directory = _keys_dir(settings)
    if directory is None:
        return None
    try:
        public, secret = read_pair(secret_path(directory, INTERNAL))
        return CurveClient(read_public(public_path(directory, SERVER)), public, secret)
    except KeyFileError as exc:
        raise KeyFileError(f"ZMQ_CURVE_KEYS_DIR: {exc}") from None


# ---------------------------------------------------------------------- server side
@dataclass(frozen=True)
class ServerKeys:
    """What a binding process loads: its secret key, the internal public key, the clients."""

    secret_key: bytes
    internal_key: bytes
    clients_dir: Path

    def __repr__(self) -> str:  # never print a secret key
        return f"ServerKeys(clients_dir={str(self.clients_dir)!r})"


def server_keys(settings: Settings) -> ServerKeys | None:
    """The server side's keys (KeyFileError naming a bad file), or None when CURVE is off."""
    directory = _keys_dir(settings)
    if directory is None:
        return None
    try:
        _, secret = read_pair(secret_path(directory, SERVER))
        internal = read_public(public_path(directory, INTERNAL))
        read_client_keys(directory / CLIENTS_DIR)
    except KeyFileError as exc:
        raise KeyFileError(f"ZMQ_CURVE_KEYS_DIR: {exc}") from None
    return ServerKeys(secret, internal, directory / CLIENTS_DIR)


def check_keys(settings: Settings) -> None:
    """Every key a one-host stack loads, so `featurestore serve` fails before starting."""
    server_keys(settings)
    internal_keys(settings)


class _ClientKeys:
    """clients/*.key, re-read when the directory or a file in it changes."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.signature = self._signature()
        self.keys = frozenset(read_client_keys(directory).values())

    def _signature(self) -> tuple:
        try:
            with os.scandir(self.directory) as entries:
                return tuple(
                    sorted((e.name, e.stat().st_mtime_ns, e.stat().st_size) for e in entries)
                )
        except OSError:
            return ()

    def current(self) -> frozenset[bytes]:
        signature = self._signature()
        if signature != self.signature:
            self.signature = signature
            keys = set()
            for path in sorted(self.directory.glob(f"*{PUBLIC_SUFFIX}")):
                try:
                    keys.add(read_public(path))
                except KeyFileError as exc:
                    log.warning("client key skipped: %s", exc)
            self.keys = frozenset(keys)
            log.info("client keys re-read from %s: %d key(s)", self.directory, len(keys))
        return self.keys


class _KeyRing:
    """The ZAP credentials provider of one domain (pyzmq's `configure_curve_callback`)."""

    def __init__(self, internal: bytes, clients: _ClientKeys | None) -> None:
        self.internal = internal
        self.clients = clients
        self.refused: dict[bytes, int] = {}

    def callback(self, domain: str, key: bytes) -> bool:
        try:
            if key == self.internal or (self.clients is not None and key in self.clients.current()):
                return True
        except Exception:  # never let the ZAP thread die: refuse instead
            log.exception("ZAP check failed on %s", domain)
        if len(self.refused) >= MAX_REFUSED_TRACKED:  # a new key per attempt: stay bounded
            self.refused.clear()
        count = self.refused[key] = self.refused.get(key, 0) + 1
        if count & (count - 1) == 0:  # 1st, 2nd, 4th, 8th... attempt: bounded logging
            log.warning("refused CURVE key %s on %s (%d attempt(s))", key.decode(), domain, count)
        return False


class ZapServer:
    """The CURVE server side of one process: its key and the ZAP authenticator of its
    context. Does nothing when CURVE is off, so callers need no branch."""

    def __init__(
        self, authenticator: zmq.auth.thread.ThreadAuthenticator | None, secret_key: bytes
    ) -> None:
        self.authenticator = authenticator
        self.secret_key = secret_key

    @classmethod
    def start(cls, context: zmq.Context, settings: Settings) -> ZapServer:
        """Load the server keys (KeyFileError at start) and start the authenticator thread."""
        keys = server_keys(settings)
        if keys is None:
            return cls(None, b"")
        clients = _ClientKeys(keys.clients_dir)
        authenticator = zmq.auth.thread.ThreadAuthenticator(context, log=log)
        authenticator.start()
        for domain in Domain:
            ring = _KeyRing(keys.internal_key, None if domain in INTERNAL_ONLY else clients)
            authenticator.configure_curve_callback(domain.value, ring)
        log.info("CURVE on: %d client key(s) in %s", len(clients.keys), clients.directory)
        return cls(authenticator, keys.secret_key)

    @property
    def enabled(self) -> bool:
        return self.authenticator is not None

    def secure(self, socket: zmq.Socket, domain: Domain) -> None:
        """Make `socket` a CURVE server of `domain`; call before `bind`."""
        if self.authenticator is None:
            return
        socket.setsockopt(zmq.CURVE_SERVER, 1)
        socket.setsockopt(zmq.CURVE_SECRETKEY, self.secret_key)
        socket.setsockopt(zmq.ZAP_DOMAIN, domain.value.encode())

    def stop(self) -> None:
        """Stop the authenticator; before `context.term()`, which it would block."""
        if self.authenticator is not None:
            self.authenticator.stop()
            self.authenticator = None


# ------------------------------------------------------------------------ generating
def generate_keys(directory: Path, force: bool = False) -> list[Path]:
    """The server, internal and default client key pairs in `directory` (made 0700, secrets
    0600). Refuses (FileExistsError) to replace any existing key unless `force`."""
    pairs = [(directory, SERVER), (directory, INTERNAL), (directory / CLIENTS_DIR, DEFAULT_CLIENT)]
    return _write_pairs(pairs, force)


def add_client(directory: Path, name: str, force: bool = False) -> list[Path]:
    """One more authorised client pair, clients/NAME.key and .key_secret."""
    if not CLIENT_NAME.match(name):
        raise ValueError(f"client name {name!r}: expected 1-64 of [A-Za-z0-9._-]")
    if not public_path(directory, SERVER).exists():
        raise FileNotFoundError(
            f"{public_path(directory, SERVER)} not found: run `featurestore keys generate` first"
        )
    return _write_pairs([(directory / CLIENTS_DIR, name)], force)


def _write_pairs(pairs: list[tuple[Path, str]], force: bool) -> list[Path]:
    targets = [path for d, n in pairs for path in (public_path(d, n), secret_path(d, n))]
    existing = [str(p) for p in targets if p.exists()]
    if existing and not force:
        raise FileExistsError(
            f"refusing to replace existing keys ({', '.join(existing)}); --force replaces them"
        )
    written = []
    for folder, name in pairs:
        _private_dir(folder)
        public, secret = zmq.curve_keypair()
        written.append(
            _write_file(public_path(folder, name), _certificate(name, public), PUBLIC_MODE)
        )
        written.append(
            _write_file(secret_path(folder, name), _certificate(name, public, secret), SECRET_MODE)
        )
    return written


def _private_dir(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(DIR_MODE)  # whatever the umask


def _certificate(name: str, public: bytes, secret: bytes | None = None) -> bytes:
    kind = "Secret" if secret else "Public"
    lines = [
        f"#   ****  Generated on {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M:%S} UTC "
        "by featurestore keys generate  ****",
        f"#   ZeroMQ CURVE {kind} Certificate",
        "#   DO NOT PROVIDE THIS FILE TO OTHER USERS." if secret else "#   Public: share freely.",
        "",
        "metadata",
        f'    name = "{name}"',
        "curve",
        f'    public-key = "{public.decode()}"',
    ]
    if secret:
        lines.append(f'    secret-key = "{secret.decode()}"')
    return ("\n".join(lines) + "\n").encode()


def _write_file(path: Path, content: bytes, mode: int) -> Path:
    """Write `content` to `path` atomically with exactly `mode` (not subject to the umask)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, SECRET_MODE)
    with os.fdopen(descriptor, "wb") as file:
        os.fchmod(descriptor, mode)
        file.write(content)
        file.flush()
        os.fsync(descriptor)
    os.replace(temporary, path)
    return path
