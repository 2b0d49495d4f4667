"""The enclave API's HTTP edge: one error guard, strict input, one route per path.

Everything a caller sends is checked here, against the same declarations the
OpenAPI description (:mod:`.openapi`) is built from, before any work starts:

- **Query parameters** (:class:`Query`): only the documented names, each at
  most once; integers are ASCII digits only (no sign, no ``²``) and bounded
  (:data:`MAX_OFFSET`, the kernel's ``loff_t``, unless a smaller bound is
  declared); booleans are ``true`` or ``false``, as the description says.
- **JSON bodies** (:func:`json_body`): standard JSON only (no ``NaN``,
  ``Infinity``, no duplicate keys), at most :data:`MAX_JSON_BODY` bytes,
  validated by a strict pydantic model (no coercion: ``"1"`` is not an
  integer, ``true`` is not a number) that refuses unknown fields.

**The error guard** (:class:`ErrorGuard`, around the whole application) is
the only place an exception becomes an answer. A :class:`StrongroomError` is
the caller's problem (or a service's) and is answered as a Problem JSON with
the status of :func:`problem_status`; anything else is our fault: it is
logged once, with its traceback, in the enclave's log, and the caller gets a
500 Problem that says nothing about it. A failure after a streamed answer has
begun cannot change its status: it is logged, and the connection is cut so
the client sees a broken answer, never a short one that looks complete.

Statuses (the same for every operation, listed per operation in the
description):

====  ===============================================================
400   the request does not match the description (a malformed path,
      parameter or body)
403   refused: the path leaves the shared folder (``..``, a symlink), a
      FIFO, socket or device, a permission the filesystem denies
404   no such file, directory or operation
405   the method is not served on this path (``Allow`` lists those that are)
409   the request conflicts with the folder's state: the entry exists, is a
      directory, is not one, is not empty, is the folder's root
413   it does not fit: beyond the shared folder's size or free space, a
      name longer than the filesystem takes (``name_max``)
422   well-formed, but what it carries is refused (an archive member, a
      sealed package's evidence)
500   our fault (logged in the enclave, never detailed to the caller)
503   a service the enclave needs is unavailable (the attestor, a thread)
====  ===============================================================

A filesystem refusal's status follows its POSIX error (``errno`` in the
Problem, which the mount hands to the kernel); other errors' follows their
class.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from strongroom.errors import (
    AccessDeniedError,
    AlreadyExistsError,
    EvidenceError,
    InsufficientSpaceError,
    InvalidInputError,
    NotFoundError,
    PathEscapeError,
    StrongroomError,
    UnavailableError,
    UsageError,
)

log = logging.getLogger("strongroom.server")
M = TypeVar("M", bound=BaseModel)

#: Largest JSON request body.
MAX_JSON_BODY = 64 * 1024
#: Largest offset, length or size the kernel takes (``loff_t``): 2**63 - 1.
MAX_OFFSET = 2**63 - 1
#: Longest path (the kernel's PATH_MAX).
MAX_PATH = 4096
#: What the caller is told of our own faults (the details are in the enclave's log).
INTERNAL_ERROR = "internal error in the enclave server (it is in the enclave's log)"

#: A filesystem refusal's status, by its POSIX error.
_ERRNO_STATUS = {
    "ENOENT": 404,
    "EACCES": 403,
    "EPERM": 403,
    "ELOOP": 403,
    "EEXIST": 409,
    "ENOTEMPTY": 409,
    "EISDIR": 409,
    "ENOTDIR": 409,
    "EBUSY": 409,
    "EINVAL": 409,
    "EXDEV": 409,
    "EMLINK": 409,
    "ETXTBSY": 409,
    "ENOSPC": 413,
    "EFBIG": 413,
    "ENAMETOOLONG": 413,
    "EDQUOT": 413,
}
#: Otherwise, by the error's class (the first that matches).
_CLASS_STATUS: tuple[tuple[type[StrongroomError], int], ...] = (
    (NotFoundError, 404),
    (AlreadyExistsError, 409),
    (AccessDeniedError, 403),
    (PathEscapeError, 403),
    (InsufficientSpaceError, 413),
    (EvidenceError, 422),
    (UsageError, 400),
    (InvalidInputError, 400),
    (UnavailableError, 503),
)
#: Every status an operation may answer with, and what it means (for the description).
STATUS_MEANING = {
    400: "the request does not match this description",
    403: "refused: outside the shared folder, a special file, or a permission",
    404: "not found",
    409: "conflicts with the shared folder's state (exists, is or is not a directory, "
    "not empty, the folder's root)",
    413: "does not fit: beyond the shared folder's size or free space, or a name "
    "longer than its name_max",
    422: "well-formed, but what it carries is refused",
    500: "an internal fault of the enclave server (logged in the enclave; no details)",
    503: "a service the enclave needs is unavailable",
}


class RequestError(InvalidInputError):
    """A request that does not match the API's description (always a 400)."""


def problem_status(error: StrongroomError) -> int:
    if isinstance(error, RequestError):
        return 400
    if error.errno_name is not None and error.errno_name in _ERRNO_STATUS:
        return _ERRNO_STATUS[error.errno_name]
    for cls, status in _CLASS_STATUS:
        if isinstance(error, cls):
            return status
    return 500


def problem_body(name: str, message: str, hint: str | None, errno: str | None = None) -> bytes:
    body: dict[str, str | None] = {"error": name, "message": message, "hint": hint}
    if errno is not None:
        body["errno"] = errno
    return json.dumps(body).encode()


def error_name(error: StrongroomError) -> str:
    """The class a client knows the error by: the nearest one of :mod:`strongroom.errors`
    (the server's own subclasses, such as :class:`RequestError`, are not on the wire)."""
    for cls in type(error).__mro__:
        if cls.__module__ == "strongroom.errors":
            return cls.__name__
    return "StrongroomError"


def problem(error: StrongroomError) -> JSONResponse:
    body: dict[str, str | None] = {
        "error": error_name(error),
        "message": error.message,
        "hint": error.hint or None,
    }
    if error.errno_name is not None:
        body["errno"] = error.errno_name
    return JSONResponse(body, status_code=problem_status(error))


# --- the guard ---------------------------------------------------------------------------


class ErrorGuard:
    """ASGI middleware: every exception becomes a Problem JSON (see the module docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as e:
            if started:
                # the status is gone: log it, end without completing the answer
                # (the server then closes the connection), never pretend it ended well
                log.exception("%s %s failed while answering", scope["method"], scope["path"])
                return
            if isinstance(e, StrongroomError):
                response: Response = problem(e)
            else:
                log.exception("%s %s failed", scope["method"], scope["path"])
                response = JSONResponse(
                    {"error": "ServiceError", "message": INTERNAL_ERROR, "hint": None},
                    status_code=500,
                )
            await response(scope, receive, send)


async def http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 and 405, as Problems (the 405 keeps its ``Allow``)."""
    assert isinstance(exc, HTTPException)
    names = {404: "NotFoundError", 405: "UsageError"}
    message = {404: "no such operation", 405: f"{request.method} is not served here"}
    body = {
        "error": names.get(exc.status_code, "InvalidInputError"),
        "message": message.get(exc.status_code, str(exc.detail)),
        "hint": None,
    }
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


Handler = Callable[[Request], Awaitable[Response]]


def route(path: str, handlers: Mapping[str, Handler]) -> Route:
    """One route for every method served on ``path``, so a 405's ``Allow`` names them all."""

    async def dispatch(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await handlers[method](request)

    return Route(path, dispatch, methods=list(handlers))


# --- query parameters -------------------------------------------------------------------

_DIGITS = re.compile(r"[0-9]{1,19}")


@dataclass(frozen=True)
class Query:
    """One query parameter of an operation, as parsed and as described."""

    name: str
    kind: Literal["path", "integer", "boolean"]
    required: bool = False
    default: int | bool | None = None
    maximum: int = MAX_OFFSET
    description: str = ""
    example: Any = None

    def parse(self, text: str) -> int | bool | str:
        if self.kind == "path":
            return check_path(text, self.name)
        if self.kind == "boolean":
            if text not in ("true", "false"):
                raise RequestError(f"query parameter {self.name} must be true or false")
            return text == "true"
        if not _DIGITS.fullmatch(text) or int(text) > self.maximum:
            raise RequestError(
                f"query parameter {self.name} must be an integer from 0 to {self.maximum}"
            )
        return int(text)

    def schema(self) -> dict[str, Any]:
        if self.kind == "path":
            return path_schema()
        if self.kind == "boolean":
            described: dict[str, Any] = {"type": "boolean"}
        else:
            described = {"type": "integer", "minimum": 0, "maximum": self.maximum}
        if self.default is not None:
            described["default"] = self.default
        return described


def parse_query(request: Request, declared: Sequence[Query]) -> dict[str, Any]:
    """The query's values by name (defaults filled in); refuses anything undeclared."""
    by_name = {q.name: q for q in declared}
    values: dict[str, Any] = {}
    for name, text in request.query_params.multi_items():
        spec = by_name.get(name)
        if spec is None:
            known = ", ".join(by_name) or "none"
            raise RequestError(f"unknown query parameter {name[:64]!r} (known: {known})")
        if name in values:
            raise RequestError(f"query parameter {name} is given more than once")
        values[name] = spec.parse(text)
    for spec in declared:
        if spec.name not in values:
            if spec.required:
                raise RequestError(f"query parameter {spec.name} is required")
            values[spec.name] = spec.default
    return values


def check_path(text: str, name: str = "path") -> str:
    """A shared-folder path as the description allows it (its meaning is :mod:`.files`')."""
    if len(text) > MAX_PATH or "\x00" in text:
        raise RequestError(f"{name} must be at most {MAX_PATH} characters, with no NUL")
    return text


def path_schema() -> dict[str, Any]:
    return {
        "type": "string",
        "maxLength": MAX_PATH,
        "pattern": "^[^\\x00]*$",
        "description": "a path inside the shared folder ('/' or '' is its root); '..' and "
        "symlinks are refused (403), each name at most name_max (255) bytes (413)",
    }


# --- JSON bodies --------------------------------------------------------------------------


def _refuse_constant(name: str) -> Any:
    raise RequestError(f"the body is not standard JSON: {name} is not a JSON value")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    value = dict(pairs)
    if len(value) != len(pairs):
        raise RequestError("the body has a duplicate key")
    return value


def _number(text: str) -> int | float:
    """A JSON number with a fraction or exponent: an integer when it is one (``2.0``, ``1e3``:
    JSON Schema's ``integer`` is a value, not a spelling)."""
    value = float(text)
    return int(value) if value.is_integer() else value


def strict_json(raw: bytes) -> Any:
    """Standard JSON only: no NaN or Infinity, no duplicate keys, UTF-8."""
    try:
        return json.loads(
            raw.decode("utf-8"),
            parse_constant=_refuse_constant,
            parse_float=_number,
            object_pairs_hook=_no_duplicates,
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        if isinstance(e, RequestError):
            raise
        raise RequestError("the body is not JSON") from None


async def read_json(request: Request) -> Any:
    size = 0
    chunks: list[bytes] = []
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_JSON_BODY:
            raise RequestError(f"request body larger than {MAX_JSON_BODY} bytes")
        chunks.append(chunk)
    return strict_json(b"".join(chunks))


async def json_body(request: Request, model: type[M]) -> M:
    """The body as ``model`` (strict, no unknown fields), or a 400 saying what is wrong."""
    value = await read_json(request)
    try:
        return model.model_validate(value, strict=True)
    except ValidationError as e:
        errors = e.errors()
        first = next((x for x in errors if x["type"] == "extra_forbidden"), errors[0])
        where = ".".join(str(p) for p in first["loc"]) or "body"
        if first["type"] == "extra_forbidden":
            raise RequestError(f"invalid request: unknown field {where[:64]!r}") from None
        raise RequestError(f"invalid request: {where}: {first['msg']}") from None
