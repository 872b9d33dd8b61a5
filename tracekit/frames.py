"""The binary spool encoding (spool format 3): a JSON header line, then CRC-checked, length-prefixed frames.

A binary spool file (``<stream>.<pid>.<id8>.tkb``) is written by capture's flusher and read by ingest::

    {"tracekit_spool": 3, "encoding": "arrow", "stream": ..., "run_id": ..., ...}\\n   one JSON line
    frame*                                                                           appended, one per flush

    frame = b"TKF" | kind (1 byte) | payload length (uint32 LE) | CRC-32 of the payload (uint32 LE) | payload
    kind  = b"B": an Arrow IPC stream (the schema, then record batches of the stream's records)
            b"E": the footer, JSON ({"tracekit_end": <ns>, "records": N, "dropped": M}), written at a clean exit

A frame is written by one ``os.write``; a process killed mid-write leaves a *torn* last frame (too short,
or its CRC does not match), which :func:`scan` detects and ingest skips until it is complete. The header
line stays JSON, so ``head -1`` shows what a file is and the JSON-lines tools that look for the header
still recognise it. This module imports nothing heavy (no pyarrow): capture imports it at start-up, and
``tracekit.capture.arrow_rows`` writes the frames' Arrow IPC in pure Python.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

BINARY_VERSION = 3  # the header's "tracekit_spool" value for binary files (JSON-lines files: 1 and 2)
ENCODING = "arrow"
SUFFIX = ".tkb"
MAGIC = b"TKF"
BATCH = b"B"
END = b"E"
_HEAD = struct.Struct("<3scII")
HEAD_SIZE = _HEAD.size  # 12 bytes


def frame(kind: bytes, payload: bytes | memoryview) -> bytes:
    """One frame: magic, kind, length and CRC-32 of ``payload``, then the payload."""
    return _HEAD.pack(MAGIC, kind, len(payload), zlib.crc32(payload)) + bytes(payload)


@dataclass
class Scan:
    """The frames found in a file body: (kind, payload start, payload end) each, where the last whole frame
    ends, and how many bytes after it do not (yet) form a frame (a torn tail, or garbage)."""

    frames: list[tuple[bytes, int, int]]
    end: int
    torn: int


def scan(data: bytes | memoryview, start: int) -> Scan:
    """The whole, intact frames of ``data`` from ``start`` on; stops at the first frame that is cut short,
    has a wrong magic or kind, or fails its CRC (everything from there is reported as torn)."""
    frames: list[tuple[bytes, int, int]] = []
    view = memoryview(data)
    size = len(view)
    pos = start
    while pos + HEAD_SIZE <= size:
        magic, kind, length, crc = _HEAD.unpack_from(view, pos)
        body = pos + HEAD_SIZE
        if magic != MAGIC or kind not in (BATCH, END) or body + length > size:
            break
        if zlib.crc32(view[body:body + length]) != crc:
            break
        frames.append((kind, body, body + length))
        pos = body + length
    return Scan(frames, pos, size - pos)
