"""
CRAM-MD5's stored form (Dovecot's C{hmac_md5_get_cram_context()}) and the
digest computed from it.
"""

from __future__ import annotations

import hashlib
import math
import struct

# RFC 1321 section 3.4. hashlib cannot resume from a saved state, which is
# what Dovecot stores for CRAM-MD5 (the HMAC-MD5 inner and outer states after
# one block each), so this one function is ours; tests check it against
# hashlib and doveadm.
_MD5_IV = (0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476)
_MD5_T = tuple(int(abs(math.sin(i + 1)) * 2**32) & 0xFFFFFFFF for i in range(64))
_MD5_S = (7, 12, 17, 22) * 4 + (5, 9, 14, 20) * 4 + (4, 11, 16, 23) * 4 + (6, 10, 15, 21) * 4
_MASK = 0xFFFFFFFF
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


def _md5Compress(state: tuple[int, ...], block: bytes) -> tuple[int, ...]:
    x = struct.unpack("<16I", block)
    a, b, c, d = state
    for i in range(64):
        if i < 16:
            f, g = (b & c) | (~b & d), i
        elif i < 32:
            f, g = (d & b) | (~d & c), (5 * i + 1) % 16
        elif i < 48:
            f, g = b ^ c ^ d, (3 * i + 5) % 16
        else:
            f, g = c ^ (b | ~d), (7 * i) % 16
        f = (f + a + _MD5_T[i] + x[g]) & _MASK
        a, d, c = d, c, b
        b = (b + ((f << _MD5_S[i]) | (f >> (32 - _MD5_S[i])))) & _MASK
    return tuple((s + v) & _MASK for s, v in zip(state, (a, b, c, d), strict=True))


def _md5Resume(state: tuple[int, ...], data: bytes, done: int = 64) -> bytes:
    """The MD5 digest of C{done} bytes that left C{state}, then C{data}."""
    length = done + len(data)
    data += b"\x80" + b"\0" * ((55 - length) % 64) + struct.pack("<Q", length * 8)
    for i in range(0, len(data), 64):
        state = _md5Compress(state, data[i : i + 64])
    return struct.pack("<4I", *state)


def cramContext(password: bytes) -> bytes:
    """Dovecot's hmac_md5_get_cram_context(): outer state, then inner."""
    key = (hashlib.md5(password).digest() if len(password) > 64 else password).ljust(64, b"\0")
    outer = _md5Compress(_MD5_IV, key.translate(_OPAD))
    inner = _md5Compress(_MD5_IV, key.translate(_IPAD))
    return struct.pack("<8I", *outer, *inner)


def cramDigest(context: bytes, challenge: bytes) -> bytes:
    """HMAC-MD5(password, challenge) from the stored context, as hex."""
    outer, inner = struct.unpack("<4I", context[:16]), struct.unpack("<4I", context[16:])
    return _md5Resume(outer, _md5Resume(inner, challenge)).hex().encode("ascii")
