"""The HTTP API's errors: :class:`ApiError` and the OpenAI error body (:func:`error_body`).

Every failure the API answers is a JSON body in OpenAI's shape::

    {"error": {"message": "...", "type": "invalid_request_error", "param": "messages.0.content",
               "code": null}}

with a 4xx status for anything the client can fix and 500 / 503 (a generic message, no traceback)
for the server's own failures. See ``docs/API.md`` for the table.
"""

from __future__ import annotations

from typing import Any

#: ``error.type`` per status, as OpenAI names them.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}


class ApiError(Exception):
    """An error the API answers with ``status`` and an OpenAI error body.

    Args:
        status: the HTTP status (4xx: the client's request; 5xx: the server).
        message: what is wrong, for the client (no server paths, no traceback).
        param: the request field at fault (dotted: ``messages.0.content.1.image_url.url``), if any.
        code: a short machine-readable code (``model_not_found``, ``payload_too_large``, ...).
        type: the error type (default: from the status, :data:`ERROR_TYPES`).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str | None = None,  # noqa: A002 (OpenAI's field name)
    ) -> None:
        super().__init__(message)
        self.status = int(status)
        self.message = message
        self.param = param
        self.code = code
        self.type = type or ERROR_TYPES.get(
            self.status, "invalid_request_error" if status < 500 else "server_error"
        )

    def body(self) -> dict[str, Any]:
        """The JSON body: ``{"error": {"message", "type", "param", "code"}}``."""
        return error_body(self.message, type=self.type, param=self.param, code=self.code)


def error_body(
    message: str,
    *,
    type: str = "invalid_request_error",  # noqa: A002
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    """OpenAI's error body for ``message``."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


__all__ = ["ERROR_TYPES", "ApiError", "error_body"]
