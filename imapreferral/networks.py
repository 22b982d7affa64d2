"""
Address lists (C{--trusted-networks}, C{--haproxy-trusted-networks}) and
the one rule for counting clients by address (L{accountingKey}).

IPv4-mapped IPv6 addresses (C{::ffff:127.0.0.1}) count as their IPv4 form.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable

import attrs

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

LOOPBACK = ("127.0.0.0/8", "::1/128")

#: One IPv6 client easily holds a whole site prefix (RFC 6177 suggests a /48
#: per site), so per-address limits count IPv6 clients per /48.
IPV6_ACCOUNTING_PREFIX = 48


def parseAddress(text: str | None) -> Address | None:
    """The address, IPv4-mapped IPv6 unwrapped; L{None} if it is not one."""
    if not text:
        return None
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@attrs.frozen
class NetworkList:
    """A set of CIDR networks, checked by L{contains}."""

    networks: tuple[Network, ...] = ()

    @classmethod
    def fromStrings(cls, texts: Iterable[str]) -> NetworkList:
        """
        Parse C{"10.0.0.0/8"}, C{"2001:db8::/32"}, C{"192.0.2.1"} (one host).

        @raise ValueError: naming the bad entry.
        """
        networks = []
        for text in texts:
            text = text.strip()
            if not text:
                continue
            try:
                networks.append(ipaddress.ip_network(text, strict=False))
            except ValueError:
                raise ValueError(
                    f"{text!r} is not a network (use CIDR, e.g. 10.0.0.0/8)"
                ) from None
        return cls(tuple(networks))

    @classmethod
    def fromOption(cls, text: str) -> NetworkList:
        """A comma- or space-separated list, as given on the command line."""
        return cls.fromStrings(text.replace(",", " ").split())

    def contains(self, host: str | None) -> bool:
        return _contains(self.networks, host)


@functools.lru_cache(maxsize=8192)
def _contains(networks: tuple[Network, ...], host: str | None) -> bool:
    """Cached: parsing an address costs more than the rest of a referral login."""
    address = parseAddress(host)
    return address is not None and any(address in n for n in networks)


@functools.lru_cache(maxsize=8192)
def accountingKey(host: str | None) -> str | None:
    """
    Who a client counts as, for every per-address limit (connections per
    address, the authentication penalty): the IPv4 address (IPv4-mapped IPv6
    unwrapped), or the IPv6 /48 (zone id dropped), as text; L{None} when
    C{host} is not an address. One rule, so an IPv6 client cannot escape one
    limit by changing addresses within its prefix, nor a dual-stack client
    by switching between C{::ffff:a.b.c.d} and C{a.b.c.d}.

    Cached like L{NetworkList.contains}: it runs on every connection.
    """
    address = parseAddress(host)
    if isinstance(address, ipaddress.IPv6Address):
        prefix = ipaddress.IPv6Network((address, IPV6_ACCOUNTING_PREFIX), strict=False)
        return str(prefix)
    return None if address is None else str(address)
