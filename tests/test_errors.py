"""The error vocabulary (filesvc/errors.py): one class per refusal, its status, code and body."""

from __future__ import annotations

import pytest

from filesvc import errors
from filesvc.errors import (
    RETRY_AFTER_SECONDS,
    FilesvcError,
    InvalidRequest,
    ServiceUnavailable,
    error_body,
)

#: Every error class with the status and code the SPEC gives it.
EXPECTED: dict[type[FilesvcError], tuple[int, str]] = {
    errors.FilesvcError: (500, "internal_error"),
    errors.InvalidRequest: (400, "invalid_request"),
    errors.Unauthorized: (401, "unauthorized"),
    errors.Forbidden: (403, "forbidden"),
    errors.SignatureRequired: (403, "signature_required"),
    errors.InvalidSignature: (403, "invalid_signature"),
    errors.NotFound: (404, "not_found"),
    errors.FileNotFound: (404, "file_not_found"),
    errors.DatasetNotFound: (404, "dataset_not_found"),
    errors.UploadNotFound: (404, "upload_not_found"),
    errors.PresetNotFound: (404, "variant_not_found"),
    errors.NotAnImage: (404, "variant_not_available"),
    errors.MethodNotAllowed: (405, "method_not_allowed"),
    errors.RequestTimeout: (408, "request_timeout"),
    errors.OffsetMismatch: (409, "offset_mismatch"),
    errors.UploadExpired: (410, "upload_expired"),
    errors.PreconditionFailed: (412, "precondition_failed"),
    errors.PayloadTooLarge: (413, "payload_too_large"),
    errors.UnsupportedMediaType: (415, "unsupported_media_type"),
    errors.RangeNotSatisfiable: (416, "range_not_satisfiable"),
    errors.InvalidContent: (422, "invalid_content"),
    errors.ChecksumMismatch: (422, "checksum_mismatch"),
    errors.UploadLocked: (423, "upload_locked"),
    errors.ChecksumFailed: (460, "checksum_failed"),
    errors.ClientClosedRequest: (499, "client_closed_request"),
    errors.ServiceUnavailable: (503, "service_unavailable"),
    errors.DatabaseUnavailable: (503, "database_unavailable"),
    errors.StorageUnavailable: (503, "storage_unavailable"),
    errors.InsufficientStorage: (507, "insufficient_storage"),
}


def _all_error_classes() -> set[type[FilesvcError]]:
    found: set[type[FilesvcError]] = set()
    pending: list[type[FilesvcError]] = [FilesvcError]
    while pending:
        kind = pending.pop()
        found.add(kind)
        pending.extend(kind.__subclasses__())
    # This module's own: other modules' errors (e.g. the decoding budget's) are tested there.
    return {kind for kind in found if kind.__module__ == "filesvc.errors"}


def test_every_error_class_is_listed_here() -> None:
    assert _all_error_classes() <= set(EXPECTED), _all_error_classes() - set(EXPECTED)


@pytest.mark.parametrize("kind", list(EXPECTED), ids=[kind.__name__ for kind in EXPECTED])
def test_each_error_has_its_status_code_and_a_sentence(kind: type[FilesvcError]) -> None:
    error = kind()
    assert (error.status_code, error.code) == EXPECTED[kind]
    assert error.message.endswith(".") and error.message[0].isupper()
    assert str(error) == error.message
    assert error_body(error.code, error.message) == {
        "error": {"code": error.code, "message": error.message}
    }


def test_a_message_and_details_override_the_defaults() -> None:
    error = InvalidRequest("'limit' must be a number.", details={"parameter": "limit"})
    assert (error.message, error.details) == ("'limit' must be a number.", {"parameter": "limit"})
    assert InvalidRequest().message == "The request is malformed."
    assert error.with_details([1]) is error and error.details == [1]


def test_unavailable_says_when_to_retry() -> None:
    for kind in (ServiceUnavailable, errors.DatabaseUnavailable, errors.StorageUnavailable):
        assert kind().headers == {"Retry-After": str(RETRY_AFTER_SECONDS)}
    assert InvalidRequest().headers == {}


def test_error_body_leaves_out_absent_details() -> None:
    assert error_body("x", "X.") == {"error": {"code": "x", "message": "X."}}
    assert error_body("x", "X.", details=[]) == {
        "error": {"code": "x", "message": "X.", "details": []}
    }
