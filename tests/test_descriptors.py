"""File descriptors against --max-connections: the arithmetic, and the limit raised."""

from __future__ import annotations

import resource

import pytest

from imapreferral.descriptors import connectionsThatFit, raiseDescriptorLimit


@pytest.mark.parametrize(
    ("wanted", "limit", "perSession", "expected"),
    [
        (2000, 1024, 1, 960),  # the default under ulimit -n 1024: lowered
        (500, 1024, 1, 500),  # fits: unchanged
        (960, 1024, 1, 960),  # fits exactly
        (0, 1024, 1, 960),  # no limit asked, but there is one
        (2000, None, 1, 2000),  # unlimited descriptors
        (0, None, 1, 0),
        (2000, 1024, 2, 480),  # proxying: two descriptors a session
        (10, 50, 1, 1),  # fewer descriptors than the reserve: still serve one
    ],
    ids=[
        "default under 1024", "fits", "fits exactly", "no limit asked", "unlimited",
        "unlimited both", "two per session", "tiny limit",
    ],
)  # fmt: skip
def test_connectionsThatFit(wanted, limit, perSession, expected):
    assert connectionsThatFit(wanted, limit, perSession=perSession) == expected


def test_softLimitIsRaisedToTheHardLimit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard < 512:
        pytest.skip(f"needs a finite hard limit of at least 512, not {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        assert raiseDescriptorLimit() == hard
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
