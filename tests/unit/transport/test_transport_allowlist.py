"""The egress allowlist: its YAML schema, the --allow syntax, and matching."""

from __future__ import annotations

from pathlib import Path

import pytest

from strongroom.errors import InvalidInputError, UsageError
from strongroom.transport.proxy import MAX_RULES, Allowlist, AllowRule, parse_allow

KMS = AllowRule("127.0.0.1", 4566)


def test_vsock_proxy_style_yaml() -> None:
    allowlist = Allowlist.parse_yaml(
        "allowlist:\n"
        "  - {address: KMS.eu-west-1.amazonaws.com, port: 443}\n"
        "  - address: 10.0.0.5\n"
        "    port: 9000\n"
        "  - {address: '::1', port: 80}\n",
        "egress.yaml",
    )
    assert allowlist.rules == (
        AllowRule("kms.eu-west-1.amazonaws.com", 443),
        AllowRule("10.0.0.5", 9000),
        AllowRule("::1", 80),
    )
    assert allowlist.allows("kms.EU-west-1.amazonaws.com", 443)
    assert not allowlist.allows("kms.eu-west-1.amazonaws.com", 80)
    assert str(allowlist.rules[2]) == "[::1]:80"


def test_a_host_matches_only_as_written() -> None:
    allowlist = Allowlist((AllowRule("localhost", 8000),))
    assert not allowlist.allows("127.0.0.1", 8000)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "exactly one key"),
        ("allowlist: []\nextra: 1\n", "exactly one key"),
        ("allowlist: {address: a, port: 1}\n", "must be a list"),
        ("allowlist: [a]\n", r"allowlist\[0\]: expected a mapping"),
        ("allowlist: [{address: a, port: 1, proto: tcp}]\n", "unknown field.*proto"),
        ("allowlist: [{adress: a, port: 1}]\n", "unknown field.*adress"),
        ("allowlist: [{address: a}]\n", "missing field.*port"),
        ("allowlist: [{address: a, port: 0}]\n", "port must be"),
        ("allowlist: [{address: a, port: 70000}]\n", "port must be"),
        ("allowlist: [{address: a, port: true}]\n", "port must be"),
        ("allowlist: [{address: a, port: '443'}]\n", "port must be"),
        ("allowlist: [{address: 12, port: 1}]\n", "address must be"),
        ("allowlist: [{address: 'a b', port: 1}]\n", "invalid host"),
        ("allowlist: [{address: a, port: 1}\n", r"not valid YAML \(line"),
        ("!!python/object/apply:os.system ['true']\n", "not valid YAML"),
    ],
)
def test_malformed_allowlists_are_one_line_errors(text: str, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message) as excinfo:
        Allowlist.parse_yaml(text, "egress.yaml")
    assert excinfo.value.message.startswith("egress.yaml")
    assert "\n" not in excinfo.value.message


def test_limits() -> None:
    many = "allowlist:\n" + "".join(
        f"  - {{address: h{i}, port: 1}}\n" for i in range(MAX_RULES + 1)
    )
    with pytest.raises(InvalidInputError, match="more than"):
        Allowlist.parse_yaml(many, "big.yaml")
    with pytest.raises(InvalidInputError, match="larger than"):
        Allowlist.parse_yaml("#" * 70_000, "huge.yaml")


def test_load_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "egress.yaml"
    path.write_text("allowlist:\n  - {address: 127.0.0.1, port: 4566}\n")
    assert Allowlist.load(path).rules == (KMS,)
    with pytest.raises(UsageError, match="cannot read"):
        Allowlist.load(tmp_path / "missing.yaml")


def test_allow_specs() -> None:
    named = {"kms": KMS}
    assert parse_allow("kms", named=named) == KMS
    assert parse_allow("example.com:443", named=named) == AllowRule("example.com", 443)
    assert parse_allow("[::1]:80", named=named) == AllowRule("::1", 80)
    for bad in ("example.com", "example.com:https", "a b:1", "host:0"):
        with pytest.raises(UsageError) as excinfo:
            parse_allow(bad, named=named)
        assert "kms" in excinfo.value.hint


def test_union_keeps_order_and_drops_duplicates() -> None:
    a = Allowlist((KMS, AllowRule("a", 1)))
    b = Allowlist((AllowRule("a", 1), AllowRule("b", 2)))
    assert (a + b).rules == (KMS, AllowRule("a", 1), AllowRule("b", 2))


def test_unresolvable_hosts_are_refused_at_start() -> None:
    allowlist = Allowlist((AllowRule("no-such-host.invalid", 443),))
    with pytest.raises(UsageError, match="does not resolve"):
        allowlist.check_resolvable()
    Allowlist((KMS,)).check_resolvable()
