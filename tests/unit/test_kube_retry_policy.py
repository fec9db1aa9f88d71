"""Which API failures are retried: transient ones only, never validation errors."""

import pytest
import urllib3

from syncd.kube_transport import HttpError, is_transient


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_throttling_and_server_errors_are_retried(status):
    assert is_transient(HttpError(status, b""))


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 410, 422])
def test_client_errors_are_not_retried(status):
    assert not is_transient(HttpError(status, b""))


def test_connection_failures_are_retried():
    assert is_transient(urllib3.exceptions.NewConnectionError(None, "refused"))
    assert is_transient(urllib3.exceptions.ReadTimeoutError(None, "/", "timed out"))
    assert is_transient(ConnectionResetError())


def test_a_write_being_retried_stops_the_moment_the_fence_closes(tmp_path):
    """A leader frozen or cut off while a write is retried: the fence (is it still the
    leader?) is checked before every attempt, so nothing more is sent once it closes. A
    real HTTP server on loopback answers 503 to everything and counts the requests."""
    import http.server
    import threading

    import yaml

    from syncd.errors import KubeError
    from syncd.kube import Kube, KubeSettings

    seen = []

    class Unavailable(http.server.BaseHTTPRequestHandler):
        def do_PUT(self):
            seen.append(self.path)
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Unavailable)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {"name": "c", "cluster": {"server": f"http://127.0.0.1:{server.server_port}"}}
                ],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    kube = Kube.connect(
        KubeSettings(kubeconfig=str(kubeconfig), retry_attempts=5, retry_max_backoff=0.05)
    )
    body = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": "s", "namespace": "ns", "resourceVersion": "1"},
    }
    try:
        with pytest.raises(KubeError) as caught:
            kube.replace(body, fence=lambda: len(seen) < 2)  # the lease is lost after two
        assert len(seen) == 2  # not the five attempts the retry policy allows
        assert "not the leader any more" in str(caught.value)
        seen.clear()
        with pytest.raises(KubeError):
            kube.replace(body)  # unfenced: every attempt is made
        assert len(seen) == 5
    finally:
        kube.close()
        server.shutdown()
