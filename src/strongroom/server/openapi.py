"""The enclave API's OpenAPI description, built from the request models.

``docs/enclave-api.json`` is this document, committed; a test checks that it
matches :func:`document` and that every route the server serves is described
(and nothing else), so the description cannot drift from the code. The server
also serves it at ``GET /v1/openapi.json`` for tools such as schemathesis.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

import strongroom
from strongroom._internal.integrity import KEY_HEADER
from strongroom.server.api import (
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
from strongroom.server.archive import MAX_DOWNLOAD_MEMBER, SHA256_RECORD

_PROBLEM = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {
        "error": {"type": "string", "description": "error class, e.g. NotFoundError"},
        "message": {"type": "string"},
        "hint": {"type": ["string", "null"]},
        "errno": {"type": "string", "description": "the POSIX error of a filesystem failure"},
    },
}
_OK = {"type": "object", "properties": {"ok": {"type": "boolean"}}}
_ENTRY = {
    "type": "object",
    "required": ["path", "type", "size", "mode", "mtime"],
    "properties": {
        "path": {"type": "string"},
        "type": {"enum": ["file", "dir", "symlink", "other"]},
        "size": {"type": "integer"},
        "mode": {"type": "integer"},
        "mtime": {"type": "number"},
    },
}
_ARCHIVE_ENTRY = {
    "type": "object",
    "required": ["path", "size", "sha256"],
    "properties": {
        "path": {"type": "string"},
        "size": {"type": "integer"},
        "sha256": {"type": "string"},
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
_PATH_PARAM = {"name": "path", "in": "query", "required": True, "schema": {"type": "string"}}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _body(model: type[BaseModel]) -> dict[str, Any]:
    return {"required": True, **_json({"$ref": f"#/components/schemas/{model.__name__}"})}


def _query(name: str, kind: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": {"type": kind}}


def _op(summary: str, ok: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "summary": summary,
        **extra,
        "responses": {
            "200": {"description": "success", **ok},
            "default": {
                "description": "a problem",
                **_json({"$ref": "#/components/schemas/Problem"}),
            },
        },
    }


def _hex_object(required: list[str], *names: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": required,
        "additionalProperties": False,
        "properties": {n: {"type": "string", "pattern": "^[0-9a-fA-F]*$"} for n in names},
    }


def document() -> dict[str, Any]:
    models: list[type[BaseModel]] = [
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
    schemas: dict[str, Any] = {"Problem": _PROBLEM, "Entry": _ENTRY}
    for model in models:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    paths: dict[str, Any] = {
        "/v1/describe": {
            "get": _op(
                "version, measurements, identity key (DER SubjectPublicKeyInfo, hex), uptime",
                _json({"type": "object"}),
            )
        },
        "/v1/attestation": {
            "post": _op(
                "an attestation document over a host-supplied nonce and the enclave's own "
                "identity key; a caller binds nothing else",
                _json({"type": "object", "properties": {"document": {"type": "string"}}}),
                requestBody={
                    "required": True,
                    **_json(_hex_object(["nonce"], "nonce")),
                },
            )
        },
        "/v1/egress-check": {
            "post": _op(
                "can a tunnel to host:port be opened through the egress path?",
                _json({"type": "object"}),
                requestBody={
                    "required": True,
                    **_json(
                        {
                            "type": "object",
                            "required": ["host", "port"],
                            "properties": {"host": {"type": "string"}, "port": {"type": "integer"}},
                        }
                    ),
                },
            )
        },
        "/v1/debug/exec": {
            "post": _op(
                "debug-mode enclaves only: run a probe command",
                _json({"type": "object"}),
                requestBody={
                    "required": True,
                    **_json(
                        {
                            "type": "object",
                            "required": ["argv"],
                            "properties": {
                                "argv": {"type": "array", "items": {"type": "string"}},
                                "timeout_s": {"type": "number"},
                            },
                        }
                    ),
                },
            )
        },
        "/v1/files/stat": {"get": _op("one entry", _json(_ENTRY), parameters=[_PATH_PARAM])},
        "/v1/files/list": {
            "get": _op(
                "a directory's entries (uploads in flight are not listed)",
                _json(
                    {
                        "type": "object",
                        "properties": {
                            "entries": {
                                "type": "array",
                                "items": {"$ref": "#/components/schemas/Entry"},
                            }
                        },
                    }
                ),
                parameters=[_PATH_PARAM],
            )
        },
        "/v1/files/content": {
            "get": _op(
                "a file's bytes, streamed",
                {
                    "content": {
                        "application/octet-stream": {
                            "schema": {"type": "string", "format": "binary"}
                        }
                    }
                },
                parameters=[_PATH_PARAM, _query("offset", "integer"), _query("length", "integer")],
            ),
            "put": _op(
                "write a streamed body; whole-file writes land atomically",
                _json(
                    {
                        "type": "object",
                        "properties": {
                            "path": {"type": "string"},
                            "size": {"type": "integer"},
                            "sha256": {"type": "string", "description": "without x-check-key"},
                            "check": {"type": "string", "description": "with x-check-key"},
                        },
                    }
                ),
                parameters=[
                    _PATH_PARAM,
                    _query("offset", "integer"),
                    _query("truncate", "boolean"),
                    _query("create", "boolean"),
                    _CHECK_KEY,
                ],
                requestBody={
                    "required": True,
                    "content": {
                        "application/octet-stream": {
                            "schema": {"type": "string", "format": "binary"}
                        }
                    },
                },
            ),
        },
        "/v1/files/checksum": {
            "get": _op(
                "SHA-256 of a file (sha256), or with x-check-key its keyed check (check)",
                _json({"type": "object"}),
                parameters=[_PATH_PARAM, _CHECK_KEY],
            )
        },
        "/v1/files/archive": {
            "post": _op(
                "extract a streamed tar under path (created if missing): regular files and "
                "directories only, each file under a temporary name renamed into place with its "
                "permission bits and mtime; a link, device, FIFO, setuid/setgid/sticky mode, "
                "a name with '..', an absolute or too long name, or a file beyond the free "
                "space is refused (400) before anything of it is written, the members before "
                "it stay (the problem's message says how many)",
                _json(
                    {
                        "type": "object",
                        "required": ["entries"],
                        "properties": {
                            "entries": {"type": "array", "items": _ARCHIVE_ENTRY},
                        },
                    }
                ),
                parameters=[_PATH_PARAM],
                requestBody={
                    "required": True,
                    "content": {
                        "application/x-tar": {"schema": {"type": "string", "format": "binary"}}
                    },
                },
            ),
            "get": _op(
                "the regular files below path of at most max_size bytes (default and most: "
                f"{MAX_DOWNLOAD_MEMBER}) as a streamed pax tar, names relative to path, each "
                f"with its SHA-256 in the pax record {SHA256_RECORD}; symlinks, special files "
                "and larger files are left out",
                {
                    "content": {
                        "application/x-tar": {"schema": {"type": "string", "format": "binary"}}
                    }
                },
                parameters=[_PATH_PARAM, _query("max_size", "integer")],
            ),
        },
        "/v1/files/mkdir": {
            "post": _op("make a directory", _json(_OK), requestBody=_body(MkdirBody))
        },
        "/v1/files": {
            "delete": _op(
                "remove a file or directory",
                _json(_OK),
                parameters=[_PATH_PARAM, _query("recursive", "boolean")],
            )
        },
        "/v1/files/rename": {"post": _op("rename", _json(_OK), requestBody=_body(RenameBody))},
        "/v1/files/truncate": {
            "post": _op("truncate", _json(_OK), requestBody=_body(TruncateBody))
        },
        "/v1/files/times": {"post": _op("set times", _json(_OK), requestBody=_body(TimesBody))},
        "/v1/files/chmod": {"post": _op("set mode", _json(_OK), requestBody=_body(ChmodBody))},
        "/v1/files/statfs": {"get": _op("sizes of the shared folder", _json({"type": "object"}))},
        "/v1/files/symlink": {
            "post": _op(
                "make a symlink whose relative target stays inside the shared folder",
                _json(_OK),
                requestBody=_body(SymlinkBody),
            )
        },
        "/v1/files/readlink": {
            "get": _op(
                "a symlink's target (never followed)",
                _json(
                    {
                        "type": "object",
                        "properties": {"path": {"type": "string"}, "target": {"type": "string"}},
                    }
                ),
                parameters=[_PATH_PARAM],
            )
        },
        "/v1/files/link": {
            "post": _op("a hard link to a regular file", _json(_OK), requestBody=_body(LinkBody))
        },
        "/v1/files/fsync": {
            "post": _op("flush a file to its filesystem", _json(_OK), requestBody=_body(FsyncBody))
        },
        "/v1/runs": {
            "post": _op(
                "run a sealed app: newline-delimited JSON events as they happen",
                {
                    "content": {
                        "application/x-ndjson": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "type": {
                                        "enum": [
                                            "status",
                                            "progress",
                                            "started",
                                            "stdout",
                                            "stderr",
                                            "exit",
                                            "error",
                                        ]
                                    },
                                },
                            }
                        }
                    }
                },
                requestBody=_body(RunRequest),
            )
        },
        "/v1/openapi.json": {"get": _op("this document", _json({"type": "object"}))},
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Strongroom enclave API",
            "version": strongroom.__version__,
            "description": "Served by the enclave server on its control channel (a unix socket "
            "locally, vsock on Nitro). See strongroom.server.api.",
        },
        "paths": paths,
        "components": {"schemas": schemas},
    }


def render() -> str:
    import json

    return json.dumps(document(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":  # python -m strongroom.server.openapi > docs/enclave-api.json
    print(render(), end="")
