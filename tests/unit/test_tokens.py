"""HTTP bearer tokens: the API_TOKENS_FILE format (featurestore/security/tokens.py) with every error
named, `featurestore keys token`, and the route checks of gateway/auth.py (401 / 403 and
their WWW-Authenticate challenges)."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from featurestore.cli import main as featurestore_cli
from featurestore.config import ConfigError, Settings
from featurestore.errors import Code
from featurestore.exitcodes import EXIT_CONFIG, EXIT_FAILURE
from featurestore.security.tokens import (
    Scope,
    TokenFileError,
    TokenTable,
    add_token,
    parse_tokens,
    read_tokens,
    tokens_from_settings,
)
from gateway.auth import AuthError, authorize, open_route, required_scope, writes

READ_TOKEN = "fs_read-token-for-tests"
WRITE_TOKEN = "fs_write-token-for-tests"


def _entry(name: str, scope: str, token: str) -> str:
    digest = hashlib.sha256(token.encode()).hexdigest()
    return f'[[token]]\nname = "{name}"\nscope = "{scope}"\nsha256 = "{digest}"\n'


VALID = _entry("reader", "read", READ_TOKEN) + _entry("writer", "write", WRITE_TOKEN)


@pytest.fixture
def table() -> TokenTable:
    return TokenTable(parse_tokens(VALID))


# ---------------------------------------------------------------------------- parsing
def test_a_valid_file_gives_each_token_its_scope(table: TokenTable) -> None:
    assert table.scope_of(READ_TOKEN) is Scope.READ
    assert table.scope_of(WRITE_TOKEN) is Scope.WRITE
    assert table.scope_of("fs_unknown") is None
    assert table.scope_of("") is None
    assert table.scope_of(READ_TOKEN.upper()) is None
    assert len(table) == 2


def test_comments_dates_and_upper_case_digests_are_accepted() -> None:
    digest = hashlib.sha256(b"x").hexdigest().upper()
    text = f'# ops\n[[token]]\nname = "a.b-c_1"\nscope = "write"\nsha256 = "{digest}"\n'
    text += "created = 2026-11-27T10:00:00Z\n"
    assert TokenTable(parse_tokens(text)).scope_of("x") is Scope.WRITE


def test_an_empty_file_has_no_tokens() -> None:
    assert parse_tokens("") == []


BAD_FILES = [
    ("[[token]\nname = 1", "not valid TOML"),
    ('tokens = "x"', "unknown key 'tokens'"),
    ('token = "x"', "array of tables"),
    ("token = [1, 2]", "array of tables"),
    ('[[token]]\nscope = "read"\nsha256 = "' + "0" * 64 + '"', "token[0]: name"),
    ('[[token]]\nname = "bad name"\nscope = "read"\nsha256 = "' + "0" * 64 + '"', "name:"),
    (
        '[[token]]\nname = "a"\nscope = "admin"\nsha256 = "' + "0" * 64 + '"',
        "token[0] ('a'): scope",
    ),
    ('[[token]]\nname = "a"\nscope = "read"\nsha256 = "abc"', "token[0] ('a'): sha256"),
    ('[[token]]\nname = "a"\nscope = "read"', "token[0] ('a'): sha256"),
    ('[[token]]\nname = "a"\nscope = "read"\nsha256 = "' + "g" * 64 + '"', "sha256"),
    (
        '[[token]]\nname = "a"\nscope = "read"\nsha256 = "' + "0" * 64 + '"\ntoken = "plain"',
        "unknown field 'token'",
    ),
    (
        '[[token]]\nname = "a"\nscope = "read"\nsha256 = "' + "0" * 64 + '"\ncreated = "today"',
        "created",
    ),
    (_entry("a", "read", "x") + _entry("a", "write", "y"), "name 'a' appears twice"),
    (_entry("a", "read", "x") + _entry("b", "write", "x"), "the digest of another"),
]


@pytest.mark.parametrize(("text", "message"), BAD_FILES, ids=[m for _, m in BAD_FILES])
def test_a_malformed_file_is_refused_naming_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(TokenFileError) as caught:
        parse_tokens(text, "API_TOKENS_FILE: /etc/fs/tokens.toml")
    assert str(caught.value).startswith("API_TOKENS_FILE: /etc/fs/tokens.toml: ")
    assert message in str(caught.value)
    assert isinstance(caught.value, ConfigError)  # entry points: one line, EXIT_CONFIG


def test_a_missing_or_unreadable_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(TokenFileError, match=r"^API_TOKENS_FILE: .*nothere\.toml: missing"):
        read_tokens(tmp_path / "nothere.toml")
    with pytest.raises(TokenFileError, match="unreadable"):
        read_tokens(tmp_path)  # a directory
    (tmp_path / "latin1.toml").write_bytes(b"# caf\xe9\n")
    with pytest.raises(TokenFileError, match="unreadable"):
        read_tokens(tmp_path / "latin1.toml")


def test_no_tokens_file_means_no_tokens(tmp_path: Path) -> None:
    assert tokens_from_settings(Settings.from_env({})) is None
    path = tmp_path / "tokens.toml"
    path.write_text(VALID)
    table = tokens_from_settings(Settings.from_env({"API_TOKENS_FILE": str(path)}))
    assert table is not None and table.scope_of(WRITE_TOKEN) is Scope.WRITE


# ---------------------------------------------------------------------------- writing
def test_add_token_keeps_only_the_digest_in_a_private_file(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "tokens.toml"
    previous = os.umask(0)
    try:
        first = add_token(path, "model-server", Scope.READ)
        second = add_token(path, "loader", Scope.WRITE)
    finally:
        os.umask(previous)
    assert first != second and first.startswith("fs_") and len(first) > 40
    text = path.read_text()
    assert first not in text and second not in text
    assert hashlib.sha256(first.encode()).hexdigest() in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    table = read_tokens(path)
    assert (table.scope_of(first), table.scope_of(second)) == (Scope.READ, Scope.WRITE)
    with pytest.raises(ValueError, match="already has a token named 'loader'"):
        add_token(path, "loader", Scope.READ)
    with pytest.raises(ValueError, match="token name"):
        add_token(path, 'x"\n[[token]]', Scope.READ)


def test_cli_token_prints_the_token_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    path = tmp_path / "tokens.toml"
    monkeypatch.setenv("API_TOKENS_FILE", str(path))
    assert featurestore_cli(["keys", "token", "--scope", "write", "--name", "ops"]) == 0
    captured = capsys.readouterr()
    token = captured.out.strip()
    assert read_tokens(path).scope_of(token) is Scope.WRITE
    assert token not in captured.err and "ops" in captured.err
    assert featurestore_cli(["keys", "token", "--scope", "read", "--name", "ops"]) == EXIT_FAILURE
    path.write_text("[[token]\n")
    assert featurestore_cli(["keys", "token", "--scope", "read", "--name", "b"]) == EXIT_CONFIG
    assert "not valid TOML" in capsys.readouterr().err


def test_cli_token_needs_a_file(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.delenv("API_TOKENS_FILE", raising=False)
    assert featurestore_cli(["keys", "token", "--scope", "read", "--name", "a"]) == EXIT_CONFIG
    assert "--file" in capsys.readouterr().err


# ----------------------------------------------------------------------- route checks
def test_routes_need_read_unless_marked() -> None:
    async def read_route() -> None: ...

    async def write_route() -> None: ...

    async def health() -> None: ...

    assert required_scope(read_route) is Scope.READ
    assert required_scope(writes(write_route)) is Scope.WRITE
    assert required_scope(open_route(health)) is None


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Basic abc", "fs_unknown"])
def test_no_valid_token_is_401_with_a_bearer_challenge(table: TokenTable, header) -> None:
    with pytest.raises(AuthError) as caught:
        authorize(header, table, Scope.READ)
    assert caught.value.code is Code.UNAUTHORIZED
    assert caught.value.http_status == 401
    assert caught.value.challenge.startswith('Bearer realm="featurestore"')


def test_an_unknown_token_is_401_invalid_token(table: TokenTable) -> None:
    with pytest.raises(AuthError) as caught:
        authorize("Bearer fs_guess", table, Scope.READ)
    assert 'error="invalid_token"' in caught.value.challenge
    assert "fs_guess" not in caught.value.message


def test_a_read_token_on_a_write_route_is_403(table: TokenTable) -> None:
    with pytest.raises(AuthError) as caught:
        authorize(f"Bearer {READ_TOKEN}", table, Scope.WRITE)
    assert caught.value.code is Code.FORBIDDEN
    assert caught.value.http_status == 403
    assert 'error="insufficient_scope"' in caught.value.challenge


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_tokens_open_the_routes_of_their_scope(table: TokenTable, scheme: str) -> None:
    authorize(f"{scheme} {READ_TOKEN}", table, Scope.READ)
    authorize(f"{scheme} {WRITE_TOKEN}", table, Scope.READ)
    authorize(f"  {scheme}   {WRITE_TOKEN} ", table, Scope.WRITE)
