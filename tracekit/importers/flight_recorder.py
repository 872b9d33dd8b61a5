"""PyTorch Flight Recorder dumps -> records of the `collectives` and `heartbeats` streams (a pure parser).

torch keeps a ring buffer of each rank's recent collectives when ``TORCH_FR_BUFFER_SIZE`` is set and
writes it as a pickle (``torch._C._distributed_c10d._dump_fr_trace()``: the files ``<prefix><rank>``
that NCCL's watchdog writes and ``torchfrtrace`` reads) or as JSON (``_dump_fr_trace_json()``). One
file is one rank; its rank is the number its name ends with. Each entry becomes one collective
record: the process group's name, ``collective_seq_id`` (``p2p_seq_id`` for point-to-point, which
get peer -1: the dump does not name the peer), the op (``profiling_name`` without its backend), bytes
from the input sizes and dtypes, the creation time as the enter time, the completion time when the
backend recorded one (NCCL does, gloo does not), and ``ok`` once completed or retired (an entry
still in the buffer unretired was in flight at the dump). Each file also gives one heartbeat: the
rank was alive when its dump was written (the file's modification time: keep it when copying, e.g.
``cp -p`` or ``rsync -a``), with its in-flight collective, so a hung rank (alive, stuck before the
collective the others entered) is told from a crashed one.

Pickles are read with an unpickler that builds only plain containers, numbers and strings: a dump
that asks for any class or function is refused, so importing a file cannot run code.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tracekit.errors import TracekitError

__all__ = ["FlightRecorderDump", "read_dump", "dump_records", "rank_of", "SOURCE"]

SOURCE = "flight_recorder"
_DTYPE_BYTES = {"float": 4, "float32": 4, "double": 8, "float64": 8, "half": 2, "float16": 2, "bfloat16": 2,
                "long": 8, "int64": 8, "int": 4, "int32": 4, "short": 2, "int16": 2, "char": 1, "int8": 1,
                "byte": 1, "uint8": 1, "bool": 1, "complexfloat": 8, "complexdouble": 16}
_RANK = re.compile(r"(\d+)(?:\.json)?$")


@dataclass
class FlightRecorderDump:
    """One rank's dump: its entries and process-group configuration, and when it was written."""

    path: Path
    rank: int
    version: str
    entries: list[dict[str, Any]]
    pg_config: dict[str, Any] = field(default_factory=dict)
    dumped_ns: int | None = None

    def world_size(self) -> int | None:
        """The size of the largest process group in the dump's configuration."""
        sizes = []
        for config in self.pg_config.values():
            ranks = config.get("ranks") if isinstance(config, dict) else None
            if isinstance(ranks, str):
                try:
                    ranks = json.loads(ranks)
                except ValueError:
                    ranks = None
            if isinstance(ranks, list):
                sizes.append(len(ranks))
        return max(sizes) if sizes else None


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a Flight Recorder dump holds plain data only")


def rank_of(path: Path) -> int:
    """The rank a dump file is of: the number its name ends with (``fr_trace_3``, ``fr_trace_3.json``)."""
    match = _RANK.search(path.name)
    if match is None:
        raise TracekitError(f"{path}: cannot tell which rank this dump is of: name it <prefix><rank> "
                            "(as torch does, e.g. nccl_trace_rank_3)")
    return int(match.group(1))


def read_dump(path: str | os.PathLike[str]) -> FlightRecorderDump:
    """Read one dump file (pickle or JSON, told apart by content)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        stat = path.stat()
    except OSError as exc:
        raise TracekitError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    data: Any
    if raw[:1] in (b"{", b"[") or raw[:1].isspace():
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise TracekitError(f"{path}: not a Flight Recorder dump (invalid JSON: {exc})") from None
    else:
        try:
            data = _PlainUnpickler(io.BytesIO(raw)).load()
        except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
            raise TracekitError(f"{path}: not a Flight Recorder dump ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("entries"), list):
        raise TracekitError(f"{path}: not a Flight Recorder dump (no 'entries' list)")
    return FlightRecorderDump(path=path, rank=rank_of(path), version=str(data.get("version", "")),
                              entries=[e for e in data["entries"] if isinstance(e, dict)],
                              pg_config=data.get("pg_config") if isinstance(data.get("pg_config"), dict) else {},
                              dumped_ns=stat.st_mtime_ns)


def _nbytes(sizes: Any, dtypes: Any) -> int | None:
    if not isinstance(sizes, list):
        return None
    total = 0
    for i, shape in enumerate(sizes):
        dtype = str(dtypes[i]).lower() if isinstance(dtypes, list) and i < len(dtypes) else "float"
        count = math.prod(int(d) for d in shape) if isinstance(shape, (list, tuple)) else 0
        total += count * _DTYPE_BYTES.get(dtype, 4)
    return total


def _time(value: Any) -> int | None:
    return int(value) if isinstance(value, (int, float)) and value > 0 else None


def dump_records(dump: FlightRecorderDump, world_size: int | None = None) -> dict[str, list[dict[str, Any]]]:
    """The dump's records by stream: ``collectives`` (one per entry) and ``heartbeats`` (one: the dump itself)."""
    world = world_size or dump.world_size()
    # a heartbeat names one in-flight collective: the one of the group issuing the most (the training group)
    counts: dict[str, int] = {}
    for e in dump.entries:
        group = e.get("process_group")
        key = str(group[0]) if isinstance(group, (list, tuple)) and group else str(e.get("pg_id", ""))
        counts[key] = counts.get(key, 0) + 1
    main_group = max(counts, key=lambda k: counts[k]) if counts else None
    collectives = []
    inflight: dict[str, Any] | None = None
    last_seq = None
    for e in dump.entries:
        p2p = bool(e.get("is_p2p"))
        group = e.get("process_group")
        name = str(group[0]) if isinstance(group, (list, tuple)) and group else str(e.get("pg_id", ""))
        seq = e.get("p2p_seq_id" if p2p else "collective_seq_id")
        if not isinstance(seq, int):
            continue
        completed = e.get("state") == "completed" or bool(e.get("retired"))
        dtypes = e.get("input_dtypes")
        record = {
            "rank": dump.rank, "world_size": world, "process_group": name, "seq": seq,
            "op": str(e.get("profiling_name", "")).split(":")[-1] or "unknown",
            "bytes": _nbytes(e.get("input_sizes"), dtypes),
            "dtype": str(dtypes[0]).lower() if isinstance(dtypes, list) and dtypes else None,
            "enter_ns": _time(e.get("time_created_ns")), "exit_ns": _time(e.get("time_discovered_completed_ns")),
            "step": None, "ok": True if completed else None, "peer": -1 if p2p else None, "async_op": None,
            "source": SOURCE, "nonfinite": None, "error": None,
        }
        if record["enter_ns"] is None:
            continue
        collectives.append(record)
        if not p2p and name == main_group:
            if completed:
                last_seq = max(seq, last_seq if last_seq is not None else seq)
            elif inflight is None or seq > inflight["seq"]:
                inflight = record
    heartbeats = []
    if dump.dumped_ns is not None:
        heartbeats.append({
            "rank": dump.rank, "ts_ns": dump.dumped_ns, "step": None, "last_seq": last_seq,
            "inflight_op": inflight["op"] if inflight else None, "inflight_seq": inflight["seq"] if inflight else None,
            "inflight_since_ns": inflight["enter_ns"] if inflight else None, "state": "alive",
            "sched_lag_ns": None, "lag_step": None,
        })
    return {"collectives": collectives, "heartbeats": heartbeats}
