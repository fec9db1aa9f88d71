"""What the HTTP/2 transport to Consul takes from the config, short of a server
(tests/integration/test_consul_http2.py runs it against a real TLS agent)."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events

from syncd.config import load_config_text
from syncd.model import ConsulConnection
from syncd.sources.consul_api import ConsulClients
from syncd.sources.consul_h2 import _H2, blocking_timeout, path_with_query


def test_the_default_budget_is_larger_over_http2_and_a_given_one_is_kept():
    assert ConsulConnection().budget() == 32
    assert ConsulConnection().budget(http2=True) == 48
    assert ConsulConnection(max_connections=8).budget(http2=True) == 8


def test_https_tries_http2_first_and_plain_http_or_http2_false_never_does():
    assert ConsulClients(ConsulConnection(address="https://127.0.0.1:8501")).http2 is None
    assert ConsulClients(ConsulConnection(address="http://127.0.0.1:8500")).http2 is False
    off = ConsulConnection(address="https://127.0.0.1:8501", http2=False)
    assert ConsulClients(off).http2 is False
    assert ConsulClients(off).pool() is None


def test_http2_can_be_turned_off_in_the_config():
    text = """\
version: 1
consul: {address: "https://consul.internal:8501", http2: false}
targets:
  - namespace: ns
    service: rgw
    ports: [{name: http, port: 80}]
    sources: [{type: consul, service: rgw}]
"""
    assert load_config_text(text, "c.yaml").consul.http2 is False


def test_a_blocking_query_may_take_its_wait_and_jitter_on_top_of_the_timeout():
    assert blocking_timeout([("tag", "a")], 10) == 10
    assert blocking_timeout([("index", 5), ("wait", "300s")], 10) == 10 + 300 + 300 / 16
    assert blocking_timeout([("index", 5), ("wait", "2m")], 1) == 1 + 120 + 120 / 16


def test_the_request_path_is_built_as_py_consul_builds_a_uri():
    assert path_with_query("/v1/health/service/a b", [("tag", "x/y")]) == (
        "/v1/health/service/a%20b?tag=x%2Fy"
    )
    assert path_with_query("/v1/catalog/services", None) == "/v1/catalog/services"


def test_a_connection_forgets_closed_streams_beyond_a_bound():
    """Watches close a stream every few minutes for as long as the daemon runs: what h2
    remembers of closed streams must not grow with them (it did, up to 65,536 each)."""
    client = _H2(config=h2.config.H2Configuration(client_side=True))
    server = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=False))
    client.initiate_connection()
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    for _ in range(3000):
        stream_id = client.get_next_available_stream_id()
        client.send_headers(stream_id, REQUEST, end_stream=True)
        for event in server.receive_data(client.data_to_send()):
            if isinstance(event, h2.events.RequestReceived):
                server.send_headers(event.stream_id, [(":status", "200")], end_stream=True)
        client.receive_data(server.data_to_send())
    assert client.open_outbound_streams == 0
    assert len(client._closed_streams) <= _H2.MAX_CLOSED_STREAMS < 3000


REQUEST = [(":method", "GET"), (":path", "/"), (":scheme", "https"), (":authority", "consul")]
