"""HTTP bearer tokens: the API_TOKENS_FILE format, its checks, and the scope of a token.

The file is TOML. It holds only the SHA-256 digest of each token, so reading it grants nothing:

    [[token]]
    name = "model-server"             # 1-64 of [A-Za-z0-9._-], unique in the file
    scope = "read"                    # "read" or "write"
    sha256 = "9f86d081884c7d65...08"  # 64 hex digits: SHA-256 of the token's UTF-8 bytes
    created = 2026-11-27T10:00:00Z    # optional

A `read` token may call the GET routes and the POST read routes (/features, /features/batch,
/features/historical); a `write` token may call every route. `featurestore keys token --scope
read|write --name NAME` makes a random token, prints it once and appends its entry. Delete an
entry to revoke its token, then restart the gateway (the file is read once at start).
"""

from __future__ import annotations

import datetime
import hashlib
import os
import re
import secrets
import tomllib
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from featurestore.config import ConfigError, Settings

TOKEN_PREFIX = "fs_"
TOKEN_BYTES = 32
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
ENTRY_KEYS = frozenset({"name", "scope", "sha256", "created"})
FILE_MODE = 0o600
DIR_MODE = 0o700
HEADER = (
    "# featurestore HTTP bearer tokens (API_TOKENS_FILE): SHA-256 digests only.\n"
    "# `featurestore keys token --scope read|write --name NAME` adds one; delete an entry to\n"
    "# revoke its token, then restart the gateway.\n"
)


class Scope(StrEnum):
    READ = "read"
    WRITE = "write"


class TokenFileError(ConfigError):
    """API_TOKENS_FILE is missing, unreadable or malformed; the message says where."""


@dataclass(frozen=True)
class TokenEntry:
    name: str
    scope: Scope
    sha256: str


class TokenTable:
    """Scope by token digest. A dict lookup of the digest: the time taken does not depend on
    how much of a guessed token matches a real one (the digest of a guess is unrelated)."""

    def __init__(self, entries: list[TokenEntry]) -> None:
        self.entries = entries
        self._scopes = {bytes.fromhex(e.sha256): e.scope for e in entries}

    def scope_of(self, token: str) -> Scope | None:
        return self._scopes.get(hashlib.sha256(token.encode("utf-8", "replace")).digest())

    def __len__(self) -> int:
        return len(self.entries)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A random token (256 bits, URL-safe), recognisable by its prefix."""
    return TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


# --------------------------------------------------------------------------- parsing
def parse_tokens(text: str, where: str = "API_TOKENS_FILE") -> list[TokenEntry]:
    """The entries of a tokens file; TokenFileError naming `where`, the entry and the field."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TokenFileError(f"{where}: not valid TOML: {exc}") from None
    unknown = sorted(set(document) - {"token"})
    if unknown:
        raise TokenFileError(f"{where}: unknown key {unknown[0]!r} (expected [[token]] entries)")
    raw_entries = document.get("token", [])
    if not isinstance(raw_entries, list) or not all(isinstance(e, dict) for e in raw_entries):
        raise TokenFileError(f"{where}: 'token' must be an array of tables ([[token]])")
    entries = [_entry(raw, f"{where}: token[{i}]") for i, raw in enumerate(raw_entries)]
    _check_unique(entries, where)
    return entries


def _entry(raw: dict[str, Any], where: str) -> TokenEntry:
    unknown = sorted(set(raw) - ENTRY_KEYS)
    if unknown:
        raise TokenFileError(f"{where}: unknown field {unknown[0]!r}")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise TokenFileError(f"{where}: name: expected 1-64 of [A-Za-z0-9._-], got {name!r}")
    where = f"{where} ({name!r})"
    scope = raw.get("scope")
    if scope not in tuple(Scope):
        raise TokenFileError(f"{where}: scope: expected 'read' or 'write', got {scope!r}")
    sha256 = raw.get("sha256")
    if not isinstance(sha256, str) or not SHA256_HEX.match(sha256.lower()):
        raise TokenFileError(f"{where}: sha256: expected 64 hexadecimal digits")
    created = raw.get("created")
    if created is not None and not isinstance(created, datetime.datetime | datetime.date):
        raise TokenFileError(f"{where}: created: expected a TOML date-time")
    return TokenEntry(name, Scope(scope), sha256.lower())


def _check_unique(entries: list[TokenEntry], where: str) -> None:
    names: set[str] = set()
    digests: set[str] = set()
    for entry in entries:
        if entry.name in names:
            raise TokenFileError(f"{where}: name {entry.name!r} appears twice")
        if entry.sha256 in digests:
            raise TokenFileError(f"{where}: token {entry.name!r} has the digest of another")
        names.add(entry.name)
        digests.add(entry.sha256)


def read_tokens(path: Path) -> TokenTable:
    where = f"API_TOKENS_FILE: {path}"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TokenFileError(
            f"{where}: missing (add a token with `featurestore keys token`)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenFileError(f"{where}: unreadable: {exc}") from None
    return TokenTable(parse_tokens(text, where))


def tokens_from_settings(settings: Settings) -> TokenTable | None:
    """The gateway's token table, or None when API_TOKENS_FILE is not set (no tokens)."""
    if not settings.api_tokens_file:
        return None
    return read_tokens(Path(settings.api_tokens_file).expanduser())


# --------------------------------------------------------------------------- writing
def add_token(path: Path, name: str, scope: Scope) -> str:
    """Make a token, append its entry to `path` (created 0600, its directory 0700 when new);
    the token itself, which is stored nowhere."""
    if not NAME.match(name):
        raise ValueError(f"token name {name!r}: expected 1-64 of [A-Za-z0-9._-]")
    existing = read_tokens(path).entries if path.exists() else []
    if any(e.name == name for e in existing):
        raise ValueError(f"{path} already has a token named {name!r}")
    token = new_token()
    created = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    entry = (
        f'\n[[token]]\nname = "{name}"\nscope = "{scope.value}"\n'
        f'sha256 = "{digest(token)}"\ncreated = {created}\n'
    )
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=DIR_MODE)
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
    with os.fdopen(descriptor, "a", encoding="utf-8") as file:
        os.fchmod(descriptor, FILE_MODE)
        if os.fstat(descriptor).st_size == 0:
            file.write(HEADER)
        file.write(entry)
    return token
