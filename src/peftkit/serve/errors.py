"""Errors the server sends to clients, in OpenAI's shape.

Every failure a client can cause or meet (a limit, an unknown model, a bad adapter, a timeout) is a
:class:`ServeError` carrying its HTTP status; the HTTP layer turns it into the body OpenAI's API
sends, ``{"error": {"message", "type", "param", "code"}}``, so the ``openai`` client raises its
usual exception classes (``BadRequestError``, ``NotFoundError``, ``RateLimitError``, ...).

>>> ServeError(404, "The model `x` does not exist.", param="model", code="model_not_found").body()["error"]["type"]
'invalid_request_error'
"""

from __future__ import annotations

from typing import Any, Optional

from ..errors import PeftkitError

# OpenAI's error types by HTTP status (what its own API sends for each).
_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "invalid_request_error", 408: "timeout_error", 409: "conflict_error", 413: "invalid_request_error",
          422: "invalid_request_error", 429: "rate_limit_error", 503: "service_unavailable_error",
          504: "timeout_error"}


class ServeError(PeftkitError):
    """A request the server answers with ``status`` and an OpenAI-shaped error body.

    Example:
        >>> raise ServeError(400, "max_tokens is 99999; the limit is 1024", param="max_tokens")  # doctest: +SKIP
    """

    def __init__(self, status: int, message: str, *, param: Optional[str] = None, code: Optional[str] = None,
                 type: Optional[str] = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")

    def body(self) -> dict[str, Any]:
        """The JSON body: ``{"error": {"message", "type", "param", "code"}}``."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def invalid(message: str, param: Optional[str] = None, code: Optional[str] = None) -> ServeError:
    """A 400 for a request field that breaks a rule (``param`` names the field)."""
    return ServeError(400, message, param=param, code=code)


def internal(error: BaseException) -> ServeError:
    """A 500 for a failure inside the server; the message names the exception, never a traceback."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return ServeError(500, f"the server failed on this request ({type(error).__name__}{': ' + text if text else ''})",
                      code="internal_error", type="server_error")
