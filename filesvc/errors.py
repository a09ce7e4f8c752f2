"""Domain errors: one exception class per refusal, with its status and code.

Code anywhere raises one of these; :mod:`filesvc.handlers` turns each into
``{"error": {"code", "message", "details"}}`` with its status. Nothing else in
the service picks status codes for failures.
"""

from __future__ import annotations

from typing import Any

from filesvc.logs import note_error_code

#: nginx's status for a client that closed the connection before the answer: logs only.
CLIENT_CLOSED_STATUS = 499
#: Seconds a client is told to wait after a 503.
RETRY_AFTER_SECONDS = 5


class FilesvcError(Exception):
    status_code = 500
    code = "internal_error"
    message = "Internal error."

    def __init__(
        self,
        message: str | None = None,
        *,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.message = message or self.message
        self.details = details
        self.headers = headers or {}
        super().__init__(self.message)

    def with_details(self, details: Any) -> FilesvcError:
        self.details = details
        return self


class InvalidRequest(FilesvcError):
    status_code = 400
    code = "invalid_request"
    message = "The request is malformed."


class Unauthorized(FilesvcError):
    status_code = 401
    code = "unauthorized"
    message = "An API key is required."


class Forbidden(FilesvcError):
    status_code = 403
    code = "forbidden"
    message = "This API key lacks the scope for this request."


class SignatureRequired(FilesvcError):
    status_code = 403
    code = "signature_required"
    message = "This file is private: use a signed URL."


class InvalidSignature(FilesvcError):
    status_code = 403
    code = "invalid_signature"
    message = "The URL signature is invalid or has expired."


class NotFound(FilesvcError):
    status_code = 404
    code = "not_found"
    message = "Not found."


class FileNotFound(NotFound):
    code = "file_not_found"
    message = "No file has this id."


class UploadNotFound(NotFound):
    code = "upload_not_found"
    message = "No upload in progress has this id."


class PresetNotFound(NotFound):
    code = "variant_not_found"
    message = "No image variant preset has this name."


class NotAnImage(NotFound):
    code = "variant_not_available"
    message = "Variants exist only for raster images."


class MethodNotAllowed(FilesvcError):
    status_code = 405
    code = "method_not_allowed"
    message = "This method is not allowed here."


class RequestTimeout(FilesvcError):
    status_code = 408
    code = "request_timeout"
    message = "The request body arrived too slowly."


class OffsetMismatch(FilesvcError):
    status_code = 409
    code = "offset_mismatch"
    message = "Upload-Offset does not match the upload's offset."


class UploadExpired(FilesvcError):
    status_code = 410
    code = "upload_expired"
    message = "This upload expired before it was complete; start a new one."


class PreconditionFailed(FilesvcError):
    status_code = 412
    code = "precondition_failed"
    message = "A precondition of the request failed."


class PayloadTooLarge(FilesvcError):
    status_code = 413
    code = "payload_too_large"
    message = "The file is larger than the limit."


class UnsupportedMediaType(FilesvcError):
    status_code = 415
    code = "unsupported_media_type"
    message = "This content type is not allowed."


class RangeNotSatisfiable(FilesvcError):
    status_code = 416
    code = "range_not_satisfiable"
    message = "No requested range is satisfiable."


class InvalidContent(FilesvcError):
    status_code = 422
    code = "invalid_content"
    message = "The content is not a valid file of its type."


class ChecksumMismatch(FilesvcError):
    status_code = 422
    code = "checksum_mismatch"
    message = "The SHA-256 of the received bytes differs from the one stated."


class UploadLocked(FilesvcError):
    status_code = 423
    code = "upload_locked"
    message = "Another request is writing to this upload; retry once it is done."


class ChecksumFailed(FilesvcError):
    # The tus checksum extension's own status: the request's bytes are dropped.
    status_code = 460
    code = "checksum_failed"
    message = "Upload-Checksum does not match the request body; its bytes were dropped."


class InsufficientStorage(FilesvcError):
    status_code = 507
    code = "insufficient_storage"
    message = "The storage is full."


class ServiceUnavailable(FilesvcError):
    status_code = 503
    code = "service_unavailable"
    message = "The service is unavailable."

    def __init__(self, message: str | None = None, *, details: Any = None) -> None:
        super().__init__(
            message, details=details, headers={"Retry-After": str(RETRY_AFTER_SECONDS)}
        )


class DatabaseUnavailable(ServiceUnavailable):
    code = "database_unavailable"
    message = "The database is unavailable."


class StorageUnavailable(ServiceUnavailable):
    code = "storage_unavailable"
    message = "The file storage is unavailable."


class ClientClosedRequest(FilesvcError):
    # nginx's 499: no client reads it, but the access log and metrics do.
    status_code = CLIENT_CLOSED_STATUS
    code = "client_closed_request"
    message = "The client closed the connection before its request was complete."


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    # Every error answer is built here: the access log and metrics learn its code.
    note_error_code(code)
    error: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        error["details"] = details
    return {"error": error}


class DatasetNotFound(NotFound):
    code = "dataset_not_found"
    message = "No export dataset has this name."
