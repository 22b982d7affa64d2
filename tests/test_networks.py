"""Trusted-network lists."""

from __future__ import annotations

import pytest

from imapreferral.networks import LOOPBACK, NetworkList, accountingKey


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


@pytest.mark.parametrize(
    ("host", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("::ffff:192.0.2.7", "192.0.2.7"),  # IPv4-mapped: the IPv4 client it is
        ("::FFFF:c000:0207", "192.0.2.7"),  # the same, spelt in hex
        ("2001:db8:1:2::5", "2001:db8:1::/48"),
        ("2001:db8:1:ffff:ffff:ffff:ffff:ffff", "2001:db8:1::/48"),  # same /48
        ("2001:db8:2::1", "2001:db8:2::/48"),  # the next /48 is someone else
        ("fe80::1%eth0", "fe80::/48"),  # zone id dropped
        ("::1", "::/48"),
        ("not an address", None),
        ("", None),
        (None, None),
    ],
    ids=lambda v: repr(v),
)
def test_accountingKey(host, key):
    assert accountingKey(host) == key
