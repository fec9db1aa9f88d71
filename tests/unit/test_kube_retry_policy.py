"""Which API failures are retried: transient ones only, never validation errors."""

import pytest
import urllib3

from syncd.kube import HttpError, _is_transient


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_throttling_and_server_errors_are_retried(status):
    assert _is_transient(HttpError(status, b""))


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 410, 422])
def test_client_errors_are_not_retried(status):
    assert not _is_transient(HttpError(status, b""))


def test_connection_failures_are_retried():
    assert _is_transient(urllib3.exceptions.NewConnectionError(None, "refused"))
    assert _is_transient(urllib3.exceptions.ReadTimeoutError(None, "/", "timed out"))
    assert _is_transient(ConnectionResetError())
