"""
The log file several C{--workers} processes share: appended to, rotated on
the size of everyone's lines, by the first process only.
"""

from __future__ import annotations

from imapreferral.logfiles import AppendingLogFile


def test_twoWritersOfOneFileKeepEachOthersLines(tmp_path):
    first = AppendingLogFile("shared.log", str(tmp_path), rotateLength=None)
    second = AppendingLogFile("shared.log", str(tmp_path), rotateLength=None)
    try:
        for i in range(3):
            first.write(f"first {i}\n")
            second.write(f"second {i}\n")
    finally:
        first.close()
        second.close()
    assert (tmp_path / "shared.log").read_text().splitlines() == [
        line for i in range(3) for line in (f"first {i}", f"second {i}")
    ]


def test_rotatesOnTheSizeOfEveryonesLinesAndSaysSo(tmp_path):
    rotations = []
    first = AppendingLogFile("shared.log", str(tmp_path), rotateLength=100)
    first.rotated = lambda: rotations.append(True)
    worker = AppendingLogFile("shared.log", str(tmp_path), rotateLength=None)
    try:
        first.write("a" * 9 + "\n")
        worker.write("w" * 99 + "\n")  # the worker's lines pass the limit
        first.write("after\n")
    finally:
        first.close()
        worker.close()
    assert rotations == [True]
    assert (tmp_path / "shared.log").read_text() == "after\n"
    assert (tmp_path / "shared.log.1").read_text() == "a" * 9 + "\n" + "w" * 99 + "\n"
