"""Trusted-network lists."""

from __future__ import annotations

import pytest

from imapreferral.networks import LOOPBACK, NetworkList


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),  # IPv4-mapped counts as IPv4
        ("192.0.2.1", False),
        ("2001:db8::1", False),
        ("not an address", False),
        (None, False),
    ],
)
def test_loopbackList(host, expected):
    assert NetworkList.fromStrings(LOOPBACK).contains(host) is expected


def test_fromOption():
    networks = NetworkList.fromOption("10.0.0.0/8, 2001:db8::/32 192.0.2.7")
    assert networks.contains("10.1.2.3") and networks.contains("2001:db8::5")
    assert networks.contains("192.0.2.7") and not networks.contains("192.0.2.8")


def test_badNetworkIsNamed():
    with pytest.raises(ValueError, match=r"'10\.0\.0\.0/33' is not a network"):
        NetworkList.fromOption("10.0.0.0/33")
