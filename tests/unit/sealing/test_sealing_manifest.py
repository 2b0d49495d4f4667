"""The app manifest: every rule of strongroom.toml, its canonical form, and its enforcement."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from strongroom.errors import InvalidInputError, NotFoundError, UsageError
from strongroom.sealing import (
    DEFAULT_PROCESSES,
    MANIFEST_NAME,
    RESERVED_ENV_NAMES,
    RESERVED_ENV_PREFIXES,
    AppManifest,
    check_host_request,
    env_name_reserved,
)
from strongroom.sealing.manifest import MAX_MANIFEST_BYTES, parse_egress

SOURCE = "app/strongroom.toml"
FULL = """
entries = ["main.py", "tools/train.py"]
env = ["CLASSIFIER_THREADS"]
egress = ["api.example.com:443"]
[resources]
memory_mib = 512
processes = 64
"""


def parse(text: str) -> AppManifest:
    return AppManifest.parse_toml(text, source=SOURCE)


def refused(text: str, match: str) -> InvalidInputError:
    with pytest.raises(InvalidInputError, match=match) as caught:
        parse(text)
    error = caught.value
    assert error.message.startswith(f"{SOURCE}"), error.message
    assert "\n" not in error.message and error.hint
    return error


def with_entries(*entries: str, extra: str = "") -> str:
    return f"entries = {json.dumps(list(entries))}\n{extra}"


# --- the schema ----------------------------------------------------------------------


def test_full_manifest() -> None:
    manifest = parse(FULL)
    assert manifest == AppManifest(
        entries=("main.py", "tools/train.py"),
        env=("CLASSIFIER_THREADS",),
        egress=(("api.example.com", 443),),
        memory_mib=512,
        processes=64,
    )
    assert manifest.to_json() == {
        "entries": ["main.py", "tools/train.py"],
        "env": ["CLASSIFIER_THREADS"],
        "egress": ["api.example.com:443"],
        "resources": {"memory_mib": 512, "processes": 64},
    }


def test_only_entries_is_required() -> None:
    manifest = parse('entries = ["main.py"]')
    assert (manifest.env, manifest.egress, manifest.memory_mib, manifest.processes) == (
        (),
        (),
        None,
        None,
    )
    assert DEFAULT_PROCESSES == 256
    assert parse('entries = ["main.py"]\n[resources]\n') == manifest


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (with_entries("main.py", extra="entry = 'x'"), "'entry'"),
        (with_entries("main.py", extra="version = 1"), "'version'"),
        (with_entries("main.py", extra="[resources]\ngpus = 1"), "'resources.gpus'"),
        (with_entries("main.py", extra="[resources]\nmemory = 1"), "'resources.memory'"),
        (with_entries("main.py", extra="[network]\nallow = []"), "'network'"),
    ],
)
def test_unknown_fields_are_refused_at_every_level(text: str, field: str) -> None:
    error = refused(text, f"unknown field {field}")
    assert "entries, env, egress" in error.hint


def test_a_near_miss_gets_a_suggestion() -> None:
    error = refused(with_entries("main.py", extra="[resources]\nmemory_mb = 5"), "memory_mb")
    assert "did you mean 'resources.memory_mib'?" in error.hint
    error = refused('entrys = ["main.py"]', "unknown field 'entrys'")
    assert "did you mean 'entries'?" in error.hint


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("env = []", "'entries' is missing"),
        ("entries = []", "'entries' has 0 items; it may have 1 to 64"),
        ("entries = 'main.py'", "'entries' must be a list of strings"),
        ("entries = [1]", r"entries\[0\] must be a string"),
        (with_entries("main.py", extra="env = 'X'"), "'env' must be a list"),
        (with_entries("main.py", extra="egress = [443]"), r"egress\[0\] must be a string"),
        (with_entries("main.py", extra="resources = 5"), "'resources' must be a table"),
        ("entries = [", "is not valid TOML"),
        ("entries = [main.py]", "is not valid TOML"),
    ],
)
def test_structure(text: str, match: str) -> None:
    refused(text, match)


def test_counts_are_bounded() -> None:
    parse(with_entries(*(f"e{i}.py" for i in range(64))))
    refused(with_entries(*(f"e{i}.py" for i in range(65))), "65 items; it may have 1 to 64")
    names = [f"V{i}" for i in range(65)]
    parse(with_entries("a.py", extra=f"env = {json.dumps(names[:64])}"))
    refused(with_entries("a.py", extra=f"env = {json.dumps(names)}"), "'env' has 65 items")
    hosts = [f"h{i}.example.com:443" for i in range(17)]
    parse(with_entries("a.py", extra=f"egress = {json.dumps(hosts[:16])}"))
    refused(with_entries("a.py", extra=f"egress = {json.dumps(hosts)}"), "'egress' has 17 items")


def test_the_file_size_is_bounded() -> None:
    padding = "#" * MAX_MANIFEST_BYTES
    refused(with_entries("main.py", extra=padding), f"larger than {MAX_MANIFEST_BYTES} bytes")


# --- entries --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "entry",
    ["main.py", "tools/train.py", "a/b/c/d.py", "données.py", "my script.py", "x.y.py", "-a.py"],
)
def test_good_entries(entry: str) -> None:
    assert parse(with_entries(entry)).entries == (entry,)


@pytest.mark.parametrize(
    ("entry", "match"),
    [
        ("../main.py", r"goes outside the tree \('..'\)"),
        ("tools/../../main.py", "goes outside the tree"),
        ("tools/../main.py", "goes outside the tree"),
        ("/main.py", "is an absolute path"),
        ("//main.py", "is an absolute path"),
        ("./main.py", "is not a normalized path"),
        ("tools/./train.py", "is not a normalized path"),
        ("tools//train.py", "is not a normalized path"),
        ("tools/", "is not a normalized path"),
        ("", "has an empty name"),
        ("main.txt", r"does not end in \.py"),
        ("main", r"does not end in \.py"),
        ("main.PY", r"does not end in \.py"),
        (".py", r"does not end in \.py"),
        ("tools\\\\train.py", "backslash"),
        ("main\\u0000.py", "control or invisible character"),
        ("main\\u001b[2J.py", "control or invisible character"),
        ("main\\u202egnp.py", "control or invisible character"),
        ("a\\u2028b.py", "control or invisible character"),
        ("x" * 260 + ".py", "component longer than 255 bytes"),
        ("/".join(["d" * 200] * 6) + ".py", "longer than 1024 bytes"),
    ],
)
def test_bad_entries(entry: str, match: str) -> None:
    text = f'entries = ["{entry}"]'
    error = refused(text, r"entries\[0\] .*" + match)
    assert "\x1b" not in error.message and "\x00" not in error.message


def test_duplicate_entries() -> None:
    refused(
        with_entries("main.py", "tools/t.py", "main.py"), r"entries\[2\] 'main.py' is listed twice"
    )


# --- env ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["CLASSIFIER_THREADS", "_x", "a1", "Batch_Size", "N" * 128])
def test_good_env_names(name: str) -> None:
    assert parse(with_entries("a.py", extra=f'env = ["{name}"]')).env == (name,)


@pytest.mark.parametrize(
    ("name", "match"),
    [
        ("1ABC", "is not a variable name"),
        ("A-B", "is not a variable name"),
        ("A B", "is not a variable name"),
        ("A=B", "is not a variable name"),
        ("", "is not a variable name"),
        ("É", "is not a variable name"),
        ("N" * 129, "longer than 128 characters"),
    ],
)
def test_bad_env_names(name: str, match: str) -> None:
    refused(with_entries("a.py", extra=f'env = ["{name}"]'), r"env\[0\] .*" + match)


RESERVED_EXAMPLES = [
    *sorted(RESERVED_ENV_NAMES),
    "LD_PRELOAD",
    "LD_LIBRARY_PATH",
    "LD_AUDIT",
    "PYTHONPATH",
    "PYTHONSTARTUP",
    "PYTHONHOME",
    "PYTHONWARNINGS",
    "DYLD_INSERT_LIBRARIES",
    "MALLOC_ARENA_MAX",
    "GCONV_PATH",
    "LC_CTYPE",
    "OPENSSL_CONF",
    "XDG_CONFIG_HOME",
    "STRONGROOM_HOME",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "all_proxy",
    "Http_Proxy",
    "ld_preload",
]


@pytest.mark.parametrize("name", RESERVED_EXAMPLES)
def test_reserved_env_names(name: str) -> None:
    assert env_name_reserved(name)
    error = refused(
        with_entries("a.py", extra=f'env = ["{name}"]'), rf"env\[0\] '{name}' is reserved"
    )
    assert "change what code runs" in error.hint


def test_the_reserved_set_covers_the_issue() -> None:
    """The names docs/FORMAT.md promises, exported for the enclave server."""
    for name in [
        "PATH",
        "HOME",
        "TMPDIR",
        "GLIBC_TUNABLES",
        "LOCPATH",
        "NLSPATH",
        "HOSTALIASES",
        "RESOLV_HOST_CONF",
        "BASH_ENV",
        "ENV",
        "IFS",
        "SHELL",
        "PWD",
        "LANG",
        "LC_ALL",
        "TZDIR",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "ALL_PROXY",
    ]:
        assert env_name_reserved(name), name
    assert set(RESERVED_ENV_PREFIXES) >= {"LD_", "PYTHON", "DYLD_", "MALLOC_", "GCONV_"}
    assert not env_name_reserved("CLASSIFIER_THREADS")
    assert not env_name_reserved("PATHS_TO_TRY")  # only PATH itself is reserved
    assert not env_name_reserved("OMP_NUM_THREADS")


def test_duplicate_env_names() -> None:
    refused(with_entries("a.py", extra='env = ["A", "B", "A"]'), r"env\[2\] 'A' is listed twice")
    assert parse(with_entries("a.py", extra='env = ["A", "a"]')).env == ("A", "a")


# --- egress ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("api.example.com:443", ("api.example.com", 443)),
        ("API.Example.COM:443", ("api.example.com", 443)),
        ("localhost:1", ("localhost", 1)),
        ("xn--bcher-kva.example:65535", ("xn--bcher-kva.example", 65535)),
        ("192.0.2.1:8443", ("192.0.2.1", 8443)),
        ("[2001:DB8:0:0::1]:443", ("2001:db8::1", 443)),
        ("[::1]:80", ("::1", 80)),
        ("a-b.c-d.example:80", ("a-b.c-d.example", 80)),
    ],
)
def test_good_egress(text: str, parsed: tuple[str, int]) -> None:
    assert parse_egress(text) == parsed
    assert parse(with_entries("a.py", extra=f'egress = ["{text}"]')).egress == (parsed,)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("api.example.com", "has no port"),
        (":443", "has no port"),
        ("api.example.com:", "invalid port"),
        ("api.example.com:0", "invalid port"),
        ("api.example.com:65536", "invalid port"),
        ("api.example.com:0443", "invalid port"),
        ("api.example.com:+443", "invalid port"),
        ("api.example.com:https", "invalid port"),
        ("::1:443", "needs brackets"),
        ("[::1]", "has no port"),
        ("[not-v6]:443", "invalid IPv6"),
        ("[fe80::1%eth0]:443", "IPv6"),
        ("[192.0.2.1]:443", "invalid IPv6"),
        ("192.0.2.256:443", "invalid IPv4"),
        ("01.2.3.4:443", "invalid IPv4"),
        ("1.2.3:443", "invalid IPv4"),
        ("*.example.com:443", "invalid hostname"),
        ("exa_mple.com:443", "invalid hostname"),
        ("-a.example.com:443", "invalid hostname"),
        ("a-.example.com:443", "invalid hostname"),
        ("api.example.com.:443", "invalid hostname"),
        ("a..b:443", "invalid hostname"),
        ("host.123:443", "invalid hostname"),
        ("bücher.example:443", "invalid hostname"),
        ("user@host:443", "invalid hostname"),
        ("http://host:443", "needs brackets"),
        (("a" * 63 + ".") * 4 + "com:443", "invalid hostname"),
    ],
)
def test_bad_egress(text: str, match: str) -> None:
    refused(with_entries("a.py", extra=f'egress = ["{text}"]'), r"egress\[0\]: .*" + match)


def test_duplicate_egress_after_normalization() -> None:
    refused(
        with_entries("a.py", extra='egress = ["A.example:443", "a.example:443"]'),
        r"egress\[1\] 'a.example:443' is listed twice",
    )
    manifest = parse(with_entries("a.py", extra='egress = ["a.example:443", "a.example:80"]'))
    assert manifest.egress == (("a.example", 443), ("a.example", 80))


# --- resources ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "ok"),
    [
        ("memory_mib", "16", True),
        ("memory_mib", "1048576", True),
        ("memory_mib", "15", False),
        ("memory_mib", "1048577", False),
        ("memory_mib", "0", False),
        ("memory_mib", "-512", False),
        ("processes", "1", True),
        ("processes", "4096", True),
        ("processes", "0", False),
        ("processes", "4097", False),
    ],
)
def test_resource_ranges(field: str, value: str, ok: bool) -> None:
    text = with_entries("a.py", extra=f"[resources]\n{field} = {value}")
    if ok:
        assert getattr(parse(text), field) == int(value)
    else:
        refused(text, rf"resources\.{field} {value} is out of range")


@pytest.mark.parametrize("value", ["true", "512.0", '"512"', "[512]", "1979-05-27"])
def test_resources_are_integers(value: str) -> None:
    refused(
        with_entries("a.py", extra=f"[resources]\nmemory_mib = {value}"),
        "resources.memory_mib must be an integer",
    )


# --- the file in the app directory ----------------------------------------------------


@pytest.fixture
def app(tmp_path: Path) -> Path:
    root = tmp_path / "app"
    (root / "tools").mkdir(parents=True)
    (root / "main.py").write_text("print('hi')\n")
    (root / "tools" / "train.py").write_text("print('train')\n")
    return root


def write_manifest(app: Path, text: str) -> Path:
    path = app / MANIFEST_NAME
    path.write_text(text)
    return path


def test_load_without_a_manifest(app: Path) -> None:
    assert AppManifest.load(app) is None


def test_load_checks_the_entries_exist(app: Path) -> None:
    write_manifest(app, FULL)
    assert AppManifest.load(app) == parse(FULL)
    write_manifest(app, with_entries("main.py", "tools/missing.py"))
    with pytest.raises(InvalidInputError, match=r"entries\[1\] 'tools/missing.py' does not exist"):
        AppManifest.load(app)
    write_manifest(app, with_entries("nodir/x.py"))
    with pytest.raises(InvalidInputError, match="does not exist"):
        AppManifest.load(app)
    write_manifest(app, with_entries("main.py/x.py"))
    with pytest.raises(InvalidInputError, match="does not exist"):
        AppManifest.load(app)


def test_load_refuses_entries_that_are_not_regular_files(app: Path, tmp_path: Path) -> None:
    (app / "dir.py").mkdir()
    write_manifest(app, with_entries("dir.py"))
    with pytest.raises(InvalidInputError, match=r"'dir\.py' is not a regular file"):
        AppManifest.load(app)
    (app / "link.py").symlink_to("main.py")
    write_manifest(app, with_entries("link.py"))
    with pytest.raises(InvalidInputError, match=r"'link\.py' is a symlink"):
        AppManifest.load(app)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "evil.py").write_text("")
    (app / "linked").symlink_to(outside)
    write_manifest(app, with_entries("linked/evil.py"))
    with pytest.raises(InvalidInputError, match="goes through the symlink 'linked'"):
        AppManifest.load(app)
    os.mkfifo(app / "fifo.py")
    write_manifest(app, with_entries("fifo.py"))
    with pytest.raises(InvalidInputError, match="not a regular file"):
        AppManifest.load(app)


def test_load_errors_name_the_file(app: Path) -> None:
    path = write_manifest(app, 'entries = ["main.py"]\nextra = 1\n')
    with pytest.raises(InvalidInputError, match=f"^{path}: unknown field 'extra'$"):
        AppManifest.load(app)


@pytest.mark.parametrize("kind", ["symlink", "directory", "fifo", "not-utf8", "too-large"])
def test_load_refuses_a_bad_manifest_file(app: Path, kind: str) -> None:
    path = app / MANIFEST_NAME
    if kind == "symlink":
        (app / "real.toml").write_text(FULL)
        path.symlink_to("real.toml")
        match = "is a symlink"
    elif kind == "directory":
        path.mkdir()
        match = "is not a regular file"
    elif kind == "fifo":
        os.mkfifo(path)  # must not block
        match = "is not a regular file"
    elif kind == "not-utf8":
        path.write_bytes(b'entries = ["m\xe9.py"]\n')
        match = "is not UTF-8 text"
    else:
        path.write_text(with_entries("main.py") + "#" * MAX_MANIFEST_BYTES)
        match = "is larger than 65536 bytes"
    with pytest.raises(InvalidInputError, match=match) as caught:
        AppManifest.load(app)
    assert caught.value.hint


# --- canonical form -------------------------------------------------------------------


def test_canonical_form() -> None:
    manifest = parse(FULL)
    assert manifest.canonical() == (
        b'{"egress":["api.example.com:443"],"entries":["main.py","tools/train.py"],'
        b'"env":["CLASSIFIER_THREADS"],"resources":{"memory_mib":512,"processes":64}}'
    )
    assert AppManifest.from_canonical(manifest.canonical()) == manifest
    minimal = parse('entries = ["données.py"]')
    assert (
        minimal.canonical()
        == (
            '{"egress":[],"entries":["données.py"],"env":[],'
            '"resources":{"memory_mib":null,"processes":null}}'
        ).encode()
    )
    assert AppManifest.from_canonical(minimal.canonical()) == minimal


def test_ipv6_egress_is_bracketed_in_the_canonical_form() -> None:
    manifest = parse(with_entries("a.py", extra='egress = ["[2001:db8::1]:443"]'))
    assert b'"egress":["[2001:db8::1]:443"]' in manifest.canonical()
    assert AppManifest.from_canonical(manifest.canonical()) == manifest


def _canonical_variants() -> list[tuple[str, bytes]]:
    good = parse(FULL).canonical()
    document = json.loads(good)
    return [
        ("spaces", json.dumps(document, sort_keys=True).encode()),
        (
            "unsorted keys",
            json.dumps(dict(reversed(document.items())), separators=(",", ":")).encode(),
        ),
        ("trailing newline", good + b"\n"),
        ("escaped ASCII", good.replace(b'"main.py"', b'"\\u006dain.py"')),
        ("uppercase host", good.replace(b"api.example.com", b"API.example.com")),
        ("utf-16", good.decode().encode("utf-16")),
        ("BOM", b"\xef\xbb\xbf" + good),
    ]


@pytest.mark.parametrize(("what", "data"), _canonical_variants())
def test_non_canonical_encodings_are_refused(what: str, data: bytes) -> None:
    with pytest.raises(InvalidInputError, match="sealed manifest") as caught:
        AppManifest.from_canonical(data)
    assert caught.value.hint, what


def _document(**changes: Any) -> bytes:
    document: dict[str, Any] = json.loads(parse(FULL).canonical())
    document.update(changes)
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (_document(extra=1), "unknown field 'extra'"),
        (_document(resources={"memory_mib": 512, "processes": 64, "gpu": 1}), "resources.gpu"),
        (_document(resources={"memory_mib": 512}), "'resources.processes' is missing"),
        (b'{"egress":[],"entries":["a.py"],"env":[]}', "'resources' is missing"),
        (_document(env=["LD_PRELOAD"]), "is reserved"),
        (_document(entries=["../a.py"]), "goes outside the tree"),
        (_document(entries=["a\ud800.py"]), "invisible character"),
        (_document(resources={"memory_mib": 512.0, "processes": 64}), "not valid JSON"),
        (_document(resources={"memory_mib": True, "processes": 64}), "must be an integer"),
        (b'{"entries":["a.py"],"entries":["b.py"]}', "duplicate key"),
        (b'{"egress":[],"entries":["a.py"],"env":[],"resources":{"memory_mib":NaN}}', "JSON"),
        (b'["a.py"]', "must be a table"),
        (b"\xff", "not valid JSON"),
        (b"", "not valid JSON"),
    ],
)
def test_invalid_sealed_manifests_are_refused(data: bytes, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        AppManifest.from_canonical(data)


def test_sealed_manifest_size_is_bounded() -> None:
    with pytest.raises(InvalidInputError, match="larger than 65536 bytes"):
        AppManifest.from_canonical(b" " * (MAX_MANIFEST_BYTES + 1))


def test_the_canonical_form_fits_the_header_limit() -> None:
    def entry(i: int) -> str:
        base = "/".join([f"{i:02d}" + "d" * 198, *(["d" * 200] * 3)]) + "/"
        return base + "f" * (1024 - len(base) - 3) + ".py"

    long_entries = tuple(entry(i) for i in range(64))
    assert all(len(e.encode()) == 1024 for e in long_entries)
    AppManifest(entries=long_entries[:60])
    with pytest.raises(InvalidInputError, match="bytes in the header; the limit is 65536"):
        AppManifest(entries=long_entries)


_NAME = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-é", min_size=1, max_size=12)


@given(
    entries=st.lists(
        st.lists(_NAME, min_size=1, max_size=3).map(lambda p: "/".join(p) + ".py"),
        min_size=1,
        max_size=8,
        unique=True,
    ),
    env=st.lists(
        st.from_regex(r"[A-Z_][A-Z0-9_]{0,20}", fullmatch=True), max_size=8, unique=True
    ).filter(lambda names: not any(env_name_reserved(n) for n in names)),
    ports=st.lists(st.integers(1, 65535), max_size=4, unique=True),
    memory=st.none() | st.integers(16, 1 << 20),
    processes=st.none() | st.integers(1, 4096),
)
def test_canonical_roundtrip(
    entries: list[str], env: list[str], ports: list[int], memory: int | None, processes: int | None
) -> None:
    manifest = AppManifest(
        entries=tuple(entries),
        env=tuple(env),
        egress=tuple(("svc.example", port) for port in ports),
        memory_mib=memory,
        processes=processes,
    )
    assert AppManifest.from_canonical(manifest.canonical()) == manifest
    toml = (
        f"entries = {json.dumps(entries, ensure_ascii=False)}\n"
        f"env = {json.dumps(env)}\n"
        f"egress = {json.dumps([f'svc.example:{p}' for p in ports])}\n"
        "[resources]\n"
        + (f"memory_mib = {memory}\n" if memory is not None else "")
        + (f"processes = {processes}\n" if processes is not None else "")
    )
    assert AppManifest.parse_toml(toml, source="t.toml") == manifest


# --- direct construction is validated too ---------------------------------------------


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"entries": ()}, "0 items"),
        ({"entries": ["main.py"]}, "must be a tuple"),
        ({"entries": ("main.py",), "egress": (("API.example", 443),)}, "not a canonical"),
        ({"entries": ("main.py",), "egress": (("a.example", 0),)}, "invalid port"),
        ({"entries": ("main.py",), "egress": (("a.example", True),)}, "pair"),
        ({"entries": ("main.py",), "egress": ("a.example:443",)}, "pair"),
        ({"entries": ("main.py",), "env": ("PATH",)}, "reserved"),
        ({"entries": ("main.py",), "processes": 0}, "out of range"),
    ],
)
def test_construction_checks_every_rule(fields: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        AppManifest(**fields)


# --- enforcement ----------------------------------------------------------------------


def test_allows_entry_exactly_as_declared() -> None:
    manifest = parse(FULL)
    assert manifest.allows_entry("main.py") and manifest.allows_entry("tools/train.py")
    for other in ["./main.py", "tools//train.py", "MAIN.py", "other.py", "model.npz", ""]:
        assert not manifest.allows_entry(other), other
    manifest.check_entry("main.py")
    with pytest.raises(NotFoundError, match=r"the app has no entry 'x\.py'") as caught:
        manifest.check_entry("x.py")
    assert caught.value.hint == "allowed entries: main.py, tools/train.py"


def test_check_env() -> None:
    manifest = parse(FULL)
    manifest.check_env([])
    manifest.check_env(["CLASSIFIER_THREADS"])
    with pytest.raises(UsageError, match="does not let the host set 'LD_PRELOAD'") as caught:
        manifest.check_env(["CLASSIFIER_THREADS", "LD_PRELOAD"])
    assert caught.value.hint == "the app allows: CLASSIFIER_THREADS"
    assert "\n" not in caught.value.message
    with pytest.raises(UsageError, match="'classifier_threads'"):
        manifest.check_env(["classifier_threads"])  # names are case-sensitive
    with pytest.raises(UsageError) as caught:
        parse('entries = ["a.py"]').check_env(["X"])
    assert caught.value.hint == "the app allows no --env at all"


def test_no_manifest_means_the_safe_defaults() -> None:
    check_host_request(None, entry="anything.py", env=[])
    with pytest.raises(UsageError, match="has no manifest, so the host may not set 'X'"):
        check_host_request(None, entry="main.py", env=["X"])
    manifest = parse(FULL)
    check_host_request(manifest, entry="main.py", env=["CLASSIFIER_THREADS"])
    with pytest.raises(NotFoundError, match=r"no entry 'other\.py'"):
        check_host_request(manifest, entry="other.py", env=[])
    with pytest.raises(UsageError, match="'HOME'"):
        check_host_request(manifest, entry="main.py", env=["HOME"])
