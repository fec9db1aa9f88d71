import pytest

from syncd.addresses import AddressRejected, canonical_endpoint_ip


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("192.0.2.1", "192.0.2.1"),
        (" 198.51.100.7 ", "198.51.100.7"),
        ("2001:DB8:0:0:0:0:0:1", "2001:db8::1"),
        ("192.168.7.50", "192.168.7.50"),
        ("239.1.2.3", "239.1.2.3"),  # ordinary multicast is accepted by the API server
    ],
)
def test_accepted_addresses_are_canonical(text, canonical):
    assert canonical_endpoint_ip(text) == canonical


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "required"),
        ("gateway", "not an IP"),
        ("192.0.2.01", "not an IP"),
        ("192.0.2.1/24", "not an IP"),
        ("fe80::1%eth0", "zone index"),
        ("::ffff:192.0.2.1", "IPv4-mapped"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("::1", "loopback"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("224.0.0.251", "link-local multicast"),
        ("ff02::fb", "link-local multicast"),
    ],
)
def test_addresses_the_api_server_rejects_are_refused_with_a_reason(text, reason):
    with pytest.raises(AddressRejected, match=reason):
        canonical_endpoint_ip(text)
