"""Every error raised by etcd3/gRPC mapped, in one place, to the library's StoreError family."""

from __future__ import annotations

import etcd3
import etcd3.exceptions
import grpc

from rx_discovery._errors import (
    AuthenticationFailed,
    LeaseNotFound,
    PermissionDenied,
    RequestTooLarge,
    StoreError,
    StoreUnavailable,
)

_UNAVAILABLE_CODES = frozenset({
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED,
    grpc.StatusCode.INTERNAL, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED,
})
# Codes after which the endpoint is skipped for a while, so that the next call fails over.
_ENDPOINT_FAILURE_CODES = frozenset({
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL,
})
_MAX_DETAILS = 300
_STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}
_STATUS_OK = grpc.StatusCode.OK.value[0]
_NO_ENDPOINT = "no etcd endpoint available"


class _TokenExpired(AuthenticationFailed):
    """The auth token expired or is unknown to the member: log in again and retry once."""

    permanent = False


class MisconfiguredEndpoint(StoreError):
    """The endpoint is not an etcd we can talk to, for a reason retrying will not fix: a TLS
    handshake that fails (a certificate not trusted, either way, or TLS against plain text),
    or a server that is not etcd (HTTP, gRPC without etcd's services)."""

    permanent = True


# What gRPC and etcd say, lowercased, for each permanent failure.
# A handshake that fails over certificates or TLS versus plain text is a configuration error;
# one cut short (EOF, reset: a server restarting) is not.
_TLS_CONFIGURATION = ("certificate", "unknown_ca", "unknown ca", "wrong_version_number",
                      "wrong version number")
_NOT_ETCD = ("http1.x server", "not a grpc answer", "http status 404")
_TOO_LARGE = ("request is too large", "larger than max")


def _translate(error: BaseException, operation: str) -> StoreError | None:
    """The library error for an error raised by etcd3/gRPC, or None if it is not one of theirs.

    Messages carry the operation, the gRPC status code name and etcd's short reason, never the
    raw gRPC debug string (which may quote request metadata).
    """
    if isinstance(error, StoreError):
        return error
    if isinstance(error, grpc.RpcError) and hasattr(error, "code"):
        return _from_status(error.code(), _details(error), operation)
    if isinstance(error, (etcd3.exceptions.ConnectionFailedError,
                          etcd3.exceptions.ConnectionTimeoutError,
                          etcd3.exceptions.InternalServerError)):
        cause = error.__context__  # python3-etcd3 raises these while handling the gRPC error
        if isinstance(cause, grpc.RpcError) and hasattr(cause, "code"):
            # its details say why (e.g. "Tls handshake failed ... BAD_CERTIFICATE")
            return _from_status(cause.code(), _details(cause), operation)
        return StoreUnavailable(f"{operation}: {str(error) or type(error).__name__}")
    if isinstance(error, etcd3.exceptions.NoServerAvailableError):
        return StoreUnavailable(f"{operation}: {_NO_ENDPOINT}")
    if isinstance(error, ValueError) and "failed node" in str(error):
        return StoreUnavailable(f"{operation}: {_NO_ENDPOINT}")
    if isinstance(error, etcd3.exceptions.Etcd3Exception):
        return StoreError(f"{operation}: {type(error).__name__}")
    return None


def _details(error: grpc.RpcError) -> str:
    try:
        details = error.details() or ""
    except Exception:  # a non-Call RpcError
        details = ""
    return str(details)[:_MAX_DETAILS]


def _from_status(code: grpc.StatusCode, details: str, operation: str) -> StoreError:
    """Map a gRPC status (code and etcd's reason) to a library error."""
    message = f"{operation}: {getattr(code, 'name', code)} {details}".rstrip()
    lowered = details.lower()
    if code == grpc.StatusCode.UNAUTHENTICATED and "invalid auth token" in lowered:
        return _TokenExpired(message)
    if "user name is empty" in lowered:
        # a call without a token since auth was enabled: log in (as etcd's Go client does);
        # without credentials, the store reports it as AuthenticationFailed
        return _TokenExpired(message)
    if "revision in header is old" in lowered:  # auth store changed: a retry succeeds
        return StoreUnavailable(message)
    if any(reason in lowered for reason in _TOO_LARGE):
        return RequestTooLarge(message)
    if "handshake failed" in lowered and any(word in lowered for word in _TLS_CONFIGURATION):
        return MisconfiguredEndpoint(f"{operation}: TLS handshake failed "
                                     f"(a configuration error: check the CA and certificates, "
                                     f"and http:// vs https://): {details}")
    if code == grpc.StatusCode.UNIMPLEMENTED or any(reason in lowered for reason in _NOT_ETCD):
        return MisconfiguredEndpoint(f"{operation}: not an etcd endpoint "
                                     f"({getattr(code, 'name', code)} {details})".rstrip())
    if code in _UNAVAILABLE_CODES:
        return StoreUnavailable(message)
    if code == grpc.StatusCode.NOT_FOUND:
        return LeaseNotFound(message)
    if code == grpc.StatusCode.PERMISSION_DENIED or "permission denied" in lowered:
        return PermissionDenied(message)
    if code == grpc.StatusCode.UNAUTHENTICATED or any(
            reason in lowered for reason in ("authentication", "user name")):
        return AuthenticationFailed(message)
    return StoreError(message)


def _status_code(error: BaseException) -> grpc.StatusCode | None:
    if isinstance(error, grpc.RpcError) and hasattr(error, "code"):
        code: grpc.StatusCode = error.code()
        return code
    return None


def _public(error: StoreError) -> StoreError:
    """Hide the internal :class:`_TokenExpired` behind its public class."""
    return AuthenticationFailed(str(error)) if isinstance(error, _TokenExpired) else error
