"""The enclave API's OpenAPI description, built from what the code parses.

``docs/enclave-api.json`` is this document, committed; tests check that it
matches :func:`document`, that every route the server serves is described
(and nothing else), and a schemathesis run against a real enclave checks the
server answers as it says (``tests/integration/enclave/test_enclave_api_fuzz.py``).
The server also serves it at ``GET /v1/openapi.json``.

Nothing here is written twice: request bodies are the pydantic models the
handlers validate with, query parameters the :class:`.http.Query` declarations
they parse with (:data:`.api.QUERIES`), and each operation lists exactly the
statuses it can answer (:data:`.http.STATUS_MEANING`). Links between
operations (a written file's ``path`` → its stat, content, checksum, chmod,
removal...) let stateful tools chain calls the way a client does.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from pydantic import BaseModel

import strongroom
from strongroom._internal.integrity import KEY_HEADER
from strongroom.server.api import (
    QUERIES,
    ChmodBody,
    FsyncBody,
    LinkBody,
    MkdirBody,
    RenameBody,
    RunRequest,
    SymlinkBody,
    TimesBody,
    TruncateBody,
)
from strongroom.server.app import AttestationRequest, EgressCheckRequest, ExecRequest
from strongroom.server.archive import MAX_DOWNLOAD_MEMBER, SHA256_RECORD
from strongroom.server.files import TIME_MAX, TIME_MIN
from strongroom.server.http import MAX_JSON_BODY, MAX_OFFSET, STATUS_MEANING, Query

_HEX = "^[0-9a-f]*$"
_PROBLEM = {
    "type": "object",
    "required": ["error", "message", "hint"],
    "properties": {
        "error": {"type": "string", "description": "error class, e.g. NotFoundError"},
        "message": {"type": "string"},
        "hint": {"type": ["string", "null"]},
        "errno": {"type": "string", "description": "the POSIX error of a filesystem refusal"},
    },
}
_ENTRY = {
    "type": "object",
    "required": ["path", "type", "size", "mode", "mtime"],
    "properties": {
        "path": {"type": "string"},
        "type": {"enum": ["file", "dir", "symlink", "other"]},
        "size": {"type": "integer", "minimum": 0},
        "mode": {"type": "integer", "minimum": 0, "maximum": 0o7777},
        "mtime": {"type": "number"},
    },
}
_DONE = {
    "type": "object",
    "required": ["ok", "path"],
    "properties": {
        "ok": {"const": True},
        "path": {"type": "string", "description": "the entry changed, as the folder names it"},
    },
}
_CHMODDED = {
    "type": "object",
    "required": ["ok", "path", "mode"],
    "properties": {
        **_DONE["properties"],  # type: ignore[dict-item]
        "mode": {
            "type": "integer",
            "description": "the mode applied: the owner (the enclave server) keeps read and "
            "write, and search on a directory, whatever is asked",
        },
    },
}
_WRITTEN = {
    "type": "object",
    "required": ["path", "size"],
    "properties": {
        "path": {"type": "string"},
        "size": {"type": "integer", "minimum": 0},
        "sha256": {"type": "string", "pattern": _HEX, "description": "without x-check-key"},
        "check": {"type": "string", "pattern": _HEX, "description": "with x-check-key"},
    },
}
_CHECKSUM = {
    "type": "object",
    "required": ["path"],
    "properties": {
        "path": {"type": "string"},
        "sha256": {"type": "string", "pattern": _HEX, "description": "without x-check-key"},
        "check": {"type": "string", "pattern": _HEX, "description": "with x-check-key"},
    },
}
_ARCHIVE_ENTRY = {
    "type": "object",
    "required": ["path", "size", "sha256"],
    "properties": {
        "path": {"type": "string"},
        "size": {"type": "integer", "minimum": 0},
        "sha256": {"type": "string", "pattern": _HEX},
    },
}
_DESCRIBE = {
    "type": "object",
    "required": ["version", "module_id", "measurements", "debug", "identity_key", "uptime_s"],
    "properties": {
        "version": {"type": "string"},
        "module_id": {"type": "string"},
        "measurements": {
            "type": "object",
            "propertyNames": {"pattern": "^pcr[0-9]+$"},
            "additionalProperties": {"type": "string", "pattern": _HEX},
        },
        "debug": {"type": "boolean"},
        "identity_key": {
            "type": "string",
            "pattern": _HEX,
            "description": "the enclave's identity key (P-384), DER SubjectPublicKeyInfo",
        },
        "uptime_s": {"type": "number", "minimum": 0},
    },
}
_EGRESS_CHECKED = {
    "type": "object",
    "required": ["ok", "status", "detail"],
    "properties": {
        "ok": {"type": "boolean"},
        "status": {"type": ["integer", "null"], "description": "the egress path's answer"},
        "detail": {"type": "string"},
    },
}
_EXECUTED = {
    "type": "object",
    "required": ["exit_code", "stdout", "stderr"],
    "properties": {
        "exit_code": {"type": ["integer", "null"]},
        "stdout": {"type": "string"},
        "stderr": {"type": "string"},
    },
}
_STATFS = {
    "type": "object",
    "required": ["block_size", "blocks", "blocks_free", "files", "files_free", "name_max"],
    "properties": {
        name: {"type": "integer", "minimum": 0}
        for name in ("block_size", "blocks", "blocks_free", "files", "files_free", "name_max")
    },
}
_RUN_EVENT = {
    "type": "object",
    "required": ["type"],
    "properties": {
        "type": {"enum": ["status", "progress", "started", "stdout", "stderr", "exit", "error"]},
    },
}
_CHECK_KEY = {
    "name": KEY_HEADER,
    "in": "header",
    "required": False,
    "description": "a fresh 128-bit key (32 lower-case hex digits): the answer carries the "
    "keyed AES-GMAC check of the bytes (per 1 MiB piece, see "
    "strongroom._internal.integrity) instead of their SHA-256",
    "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
}
_BINARY = {"type": "string", "format": "binary"}

#: The statuses of the operations on the shared folder.
_FILES = (400, 403, 404, 409, 413, 500)


def _json(schema: dict[str, Any], example: Any = None) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": schema}
    if example is not None:
        media["example"] = example
    return {"content": {"application/json": media}}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _body(model: type[BaseModel], example: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, **_json(_ref(model.__name__), example)}


def _parameter(query: Query) -> dict[str, Any]:
    described: dict[str, Any] = {
        "name": query.name,
        "in": "query",
        "required": query.required,
        "schema": query.schema(),
    }
    if query.description:
        described["description"] = query.description
    if query.example is not None:
        described["example"] = query.example
    return described


def _op(
    path: str,
    method: str,
    operation_id: str,
    summary: str,
    ok: dict[str, Any],
    statuses: tuple[int, ...],
    **extra: Any,
) -> dict[str, Any]:
    responses: dict[str, Any] = {"200": {"description": "success", **ok}}
    for status in statuses:
        responses[str(status)] = {"$ref": f"#/components/responses/Problem{status}"}
    described: dict[str, Any] = {"operationId": operation_id, "summary": summary}
    parameters = [_parameter(q) for q in QUERIES.get((path, method), ())]
    parameters += extra.pop("headers", [])
    if parameters:
        described["parameters"] = parameters
    return {**described, **extra, "responses": responses}


def _links(**targets: dict[str, Any]) -> dict[str, Any]:
    return {"links": {name: link for name, link in targets.items()}}


def _by_path(operation_id: str, _body: bool = False, **body: Any) -> dict[str, Any]:
    """A link to ``operation_id`` for the entry the answer names (its ``path``), in its
    query or (``_body``, or other fields given) in its JSON body."""
    if body or _body:
        return {
            "operationId": operation_id,
            "requestBody": {"path": "$response.body#/path", **body},
        }
    return {"operationId": operation_id, "parameters": {"path": "$response.body#/path"}}


def _entry_links() -> dict[str, Any]:
    """What a client does next with an entry it has just made or changed."""
    return {
        "Stat": _by_path("stat"),
        "Read": _by_path("readContent"),
        "Checksum": _by_path("checksum"),
        "Chmod": _by_path("chmod", mode=0o640),
        "SetTimes": _by_path("setTimes", atime=1_600_000_000, mtime=1_600_000_000.5),
        "Truncate": _by_path("truncate", size=3),
        "Fsync": _by_path("fsync", _body=True),
        "Remove": _by_path("remove"),
    }


def _schemas() -> dict[str, Any]:
    models: list[type[BaseModel]] = [
        AttestationRequest,
        EgressCheckRequest,
        ExecRequest,
        MkdirBody,
        RenameBody,
        TruncateBody,
        TimesBody,
        ChmodBody,
        SymlinkBody,
        LinkBody,
        FsyncBody,
        RunRequest,
    ]
    schemas: dict[str, Any] = {
        "Problem": _PROBLEM,
        "Entry": _ENTRY,
        "Done": _DONE,
        "Chmodded": _CHMODDED,
        "Written": _WRITTEN,
        "Checksum": _CHECKSUM,
        "Describe": _DESCRIBE,
        "EgressChecked": _EGRESS_CHECKED,
        "Executed": _EXECUTED,
        "Statfs": _STATFS,
        "RunEvent": _RUN_EVENT,
    }
    for model in models:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    # a dict's key constraints, as JSON Schema says them (pydantic writes patternProperties,
    # which would leave a key that does not match unconstrained)
    env = copy.deepcopy(schemas["RunRequest"]["properties"]["env"])
    ((key_pattern, value),) = env.pop("patternProperties").items()
    env["propertyNames"] = {**env["propertyNames"], "pattern": key_pattern}
    env["additionalProperties"] = value
    schemas["RunRequest"]["properties"]["env"] = env
    times = schemas["TimesBody"]
    for name in ("atime", "mtime"):
        times["properties"][name]["description"] = (
            f"seconds since the epoch, {TIME_MIN} to {TIME_MAX} (what the shared folder's "
            "filesystem stores; it would clamp anything beyond)"
        )
    schemas["TruncateBody"]["properties"]["size"]["description"] = (
        "at most the shared folder's size (413 beyond it)"
    )
    schemas["ChmodBody"]["properties"]["mode"]["description"] = (
        "permission bits; the owner (the enclave server) keeps read and write, and search "
        "on a directory, whatever is asked, so no mode can lock the server out"
    )
    return schemas


def _paths() -> dict[str, Any]:
    content_get = _op(
        "/v1/files/content",
        "get",
        "readContent",
        "a file's bytes, streamed (reads stop when the client goes away)",
        {
            "headers": {
                "x-file-size": {
                    "required": True,
                    "description": "the file's whole size",
                    "schema": {"type": "string", "pattern": "^[0-9]+$"},
                },
                "x-sha256": {
                    "required": False,
                    "description": "the file's SHA-256, when what is sent is at most 1 MiB",
                    "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                },
            },
            "content": {"application/octet-stream": {"schema": _BINARY}},
        },
        _FILES,
    )
    content_put = _op(
        "/v1/files/content",
        "put",
        "writeContent",
        "write a streamed body; whole-file writes (offset 0, truncate) land atomically",
        {**_json(_ref("Written")), **_links(**_entry_links())},
        (*_FILES, 503),
        headers=[_CHECK_KEY],
        requestBody={
            "required": False,
            "description": "the bytes (none: an empty write, e.g. a new empty file)",
            "content": {
                "application/octet-stream": {"schema": _BINARY, "example": "hello, enclave\n"}
            },
        },
    )
    return {
        "/v1/describe": {
            "get": _op(
                "/v1/describe",
                "get",
                "describe",
                "version, measurements, identity key, uptime",
                _json(_ref("Describe")),
                (400, 500),
            )
        },
        "/v1/attestation": {
            "post": _op(
                "/v1/attestation",
                "post",
                "attest",
                "an attestation document over a host-supplied nonce and the enclave's own "
                "identity key; a caller binds nothing else",
                _json(
                    {
                        "type": "object",
                        "required": ["document"],
                        "properties": {"document": {"type": "string", "contentEncoding": "base64"}},
                    }
                ),
                (400, 500, 503),
                requestBody=_body(
                    AttestationRequest, {"nonce": "00112233445566778899aabbccddeeff"}
                ),
            )
        },
        "/v1/egress-check": {
            "post": _op(
                "/v1/egress-check",
                "post",
                "egressCheck",
                "can a tunnel to host:port be opened through the egress path? (the host's "
                "egress proxy and its allowlist decide)",
                _json(_ref("EgressChecked")),
                (400, 500),
                requestBody=_body(EgressCheckRequest, {"host": "kms.local", "port": 443}),
            )
        },
        "/v1/debug/exec": {
            "post": _op(
                "/v1/debug/exec",
                "post",
                "debugExec",
                "debug-mode enclaves only (404 elsewhere): run a probe command",
                _json(_ref("Executed")),
                (400, 404, 500),
                requestBody=_body(ExecRequest, {"argv": ["true"], "timeout_s": 5}),
            )
        },
        "/v1/files/stat": {
            "get": _op(
                "/v1/files/stat",
                "get",
                "stat",
                "one entry (a symlink is described, never followed)",
                _json(_ref("Entry")),
                _FILES,
            )
        },
        "/v1/files/list": {
            "get": _op(
                "/v1/files/list",
                "get",
                "list",
                "a directory's entries (uploads in flight are not listed)",
                _json(
                    {
                        "type": "object",
                        "required": ["entries"],
                        "properties": {"entries": {"type": "array", "items": _ref("Entry")}},
                    }
                ),
                _FILES,
            )
        },
        "/v1/files/content": {"get": content_get, "put": content_put},
        "/v1/files/checksum": {
            "get": _op(
                "/v1/files/checksum",
                "get",
                "checksum",
                "SHA-256 of a file (sha256), or with x-check-key its keyed check (check); "
                "the hashing stops when the client goes away",
                _json(_ref("Checksum")),
                _FILES,
                headers=[_CHECK_KEY],
            )
        },
        "/v1/files/archive": {
            "post": _op(
                "/v1/files/archive",
                "post",
                "extractArchive",
                "extract a streamed tar under path (created if missing): regular files and "
                "directories only, each file under a temporary name renamed into place with its "
                "permission bits (the owner keeps read and write) and mtime; a link, device, "
                "FIFO, setuid/setgid/sticky mode, a name with '..', an absolute or too long "
                "name, an mtime the folder cannot store, or a file beyond the free space is "
                "refused (400, 403 or 413) before anything of it is written, the members "
                "before it stay (the problem's message says how many)",
                _json(
                    {
                        "type": "object",
                        "required": ["entries"],
                        "properties": {"entries": {"type": "array", "items": _ARCHIVE_ENTRY}},
                    }
                ),
                (*_FILES, 503),
                requestBody={
                    "required": True,
                    "content": {"application/x-tar": {"schema": _BINARY}},
                },
            ),
            "get": _op(
                "/v1/files/archive",
                "get",
                "readArchive",
                "the regular files below path of at most max_size bytes (default and most: "
                f"{MAX_DOWNLOAD_MEMBER}) as a streamed pax tar, names relative to path, each "
                f"with its SHA-256 in the pax record {SHA256_RECORD}; symlinks, special files "
                "and larger files are left out",
                {"content": {"application/x-tar": {"schema": _BINARY}}},
                _FILES,
            ),
        },
        "/v1/files/mkdir": {
            "post": _op(
                "/v1/files/mkdir",
                "post",
                "mkdir",
                "make a directory (mode 0755), with its parents if asked",
                {**_json(_ref("Done")), **_links(Stat=_by_path("stat"), List=_by_path("list"))},
                _FILES,
                requestBody=_body(MkdirBody, {"path": "/dataset", "parents": True}),
            )
        },
        "/v1/files": {
            "delete": _op(
                "/v1/files",
                "delete",
                "remove",
                "remove a file, symlink or (empty, or with recursive) directory",
                {**_json(_ref("Done")), **_links(Stat=_by_path("stat"))},
                _FILES,
            )
        },
        "/v1/files/rename": {
            "post": _op(
                "/v1/files/rename",
                "post",
                "rename",
                "rename (replacing the destination, as rename(2) does)",
                {**_json(_ref("Done")), **_links(**_entry_links())},
                _FILES,
                requestBody=_body(
                    RenameBody, {"source": "/from_server.txt", "destination": "/renamed.txt"}
                ),
            )
        },
        "/v1/files/truncate": {
            "post": _op(
                "/v1/files/truncate",
                "post",
                "truncate",
                "set a regular file's size (at most the shared folder's size)",
                {**_json(_ref("Done")), **_links(**_entry_links())},
                _FILES,
                requestBody=_body(TruncateBody, {"path": "/from_server.txt", "size": 0}),
            )
        },
        "/v1/files/times": {
            "post": _op(
                "/v1/files/times",
                "post",
                "setTimes",
                "set an entry's access and modification times (a symlink's own)",
                {**_json(_ref("Done")), **_links(Stat=_by_path("stat"))},
                _FILES,
                requestBody=_body(
                    TimesBody,
                    {"path": "/from_server.txt", "atime": 1_600_000_000, "mtime": 1_600_000_000.5},
                ),
            )
        },
        "/v1/files/chmod": {
            "post": _op(
                "/v1/files/chmod",
                "post",
                "chmod",
                "set a regular file's or directory's permission bits (the owner keeps what "
                "the server needs; the answer says the mode applied)",
                {**_json(_ref("Chmodded")), **_links(Stat=_by_path("stat"))},
                _FILES,
                requestBody=_body(ChmodBody, {"path": "/from_server.txt", "mode": 0o600}),
            )
        },
        "/v1/files/statfs": {
            "get": _op(
                "/v1/files/statfs",
                "get",
                "statfs",
                "sizes of the shared folder's filesystem (a fixed slice of enclave memory)",
                _json(_ref("Statfs")),
                (400, 500),
            )
        },
        "/v1/files/symlink": {
            "post": _op(
                "/v1/files/symlink",
                "post",
                "symlink",
                "make a symlink whose relative target only points down (no '..', never absolute)",
                {
                    **_json(_ref("Done")),
                    **_links(Readlink=_by_path("readlink"), Stat=_by_path("stat")),
                },
                _FILES,
                requestBody=_body(SymlinkBody, {"path": "/latest", "target": "from_server.txt"}),
            )
        },
        "/v1/files/readlink": {
            "get": _op(
                "/v1/files/readlink",
                "get",
                "readlink",
                "a symlink's target (never followed)",
                _json(
                    {
                        "type": "object",
                        "required": ["path", "target"],
                        "properties": {"path": {"type": "string"}, "target": {"type": "string"}},
                    }
                ),
                _FILES,
            )
        },
        "/v1/files/link": {
            "post": _op(
                "/v1/files/link",
                "post",
                "link",
                "a second name (hard link) for a regular file",
                {**_json(_ref("Done")), **_links(**_entry_links())},
                _FILES,
                requestBody=_body(
                    LinkBody, {"source": "/from_server.txt", "destination": "/linked.txt"}
                ),
            )
        },
        "/v1/files/fsync": {
            "post": _op(
                "/v1/files/fsync",
                "post",
                "fsync",
                "flush a file or directory (the root too) to its filesystem",
                _json(_ref("Done")),
                _FILES,
                requestBody=_body(FsyncBody, {"path": "/"}),
            )
        },
        "/v1/runs": {
            "post": _op(
                "/v1/runs",
                "post",
                "run",
                "run a sealed app: its request is checked first (a Problem if refused), then "
                "newline-delimited JSON events as they happen (a failure from the key release "
                "on is an error event)",
                {"content": {"application/x-ndjson": {"schema": _ref("RunEvent")}}},
                (400, 403, 404, 409, 413, 422, 500, 503),
                requestBody=_body(
                    RunRequest,
                    {
                        "package": "/app.sealed",
                        "entry": "main.py",
                        "args": ["/dataset/input.csv"],
                        "credentials": {
                            "access_key_id": "ASIAEXAMPLE",
                            "secret_access_key": "example",
                            "session_token": "example",
                        },
                        "key_service": {"region": "eu-west-2"},
                    },
                ),
            )
        },
        "/v1/openapi.json": {
            "get": _op(
                "/v1/openapi.json",
                "get",
                "openapi",
                "this document",
                _json({"type": "object"}),
                (400, 500),
            )
        },
    }


def document() -> dict[str, Any]:
    statuses = "\n".join(f"- {status}: {meaning}" for status, meaning in STATUS_MEANING.items())
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Strongroom enclave API",
            "version": strongroom.__version__,
            "description": "Served by the enclave server on its control channel (a unix socket "
            "locally, vsock on Nitro). See strongroom.server.api and strongroom.server.http.\n\n"
            "Every error is a Problem (application/json). The statuses, the same for every "
            "operation (each lists those it can answer):\n"
            f"{statuses}\n\n"
            "A request that matches this description is never answered 400; one that does not "
            "always is. Query parameters not described are refused, as is a parameter given "
            "twice; integers are ASCII digits, booleans true or false. JSON bodies are standard "
            f"JSON (no NaN, Infinity or duplicate keys), at most {MAX_JSON_BODY} bytes. Offsets "
            f"and sizes are at most {MAX_OFFSET} (the kernel's), and a file may not end beyond "
            "the shared folder's size (413).",
        },
        "paths": _paths(),
        "components": {
            "schemas": _schemas(),
            "responses": {
                f"Problem{status}": {
                    "description": meaning,
                    **_json(_ref("Problem")),
                }
                for status, meaning in STATUS_MEANING.items()
            },
        },
    }


def render() -> str:
    return json.dumps(document(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":  # python -m strongroom.server.openapi > docs/enclave-api.json
    print(render(), end="")
