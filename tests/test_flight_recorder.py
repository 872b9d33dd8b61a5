"""`tracekit import flight-recorder`: torch-written Flight Recorder dumps (pickle and JSON) of real gloo jobs -> a run
whose hung or crashed rank `tracekit anomalies` names, with the process group and sequence number."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from foundation_helpers import assert_one_line_error, cli

ROOT = Path(__file__).resolve().parents[1]
JOB = ROOT / "fixtures" / "fr_job.py"


def make_dumps(tmp: Path, fault: str, rank: int, world: int = 4, port: int = 29950) -> Path:
    """Run fixtures/fr_job.py under plain torchrun (no tracekit) with the ring buffer on; torch writes the dumps."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACEKIT_")}
    env.update(TORCH_FR_BUFFER_SIZE="2000", OMP_NUM_THREADS="1", TRACEKIT_DISABLED="1")
    dumps = tmp / "dumps"
    subprocess.run(["torchrun", "--nproc-per-node", str(world), "--master-port", str(port), "--monitor-interval", "2",
                    str(JOB), "--dump-dir",
                    str(dumps), "--fault", fault, "--fault-rank", str(rank), "--steps", "20", "--fault-step", "8"],
                   env=env, capture_output=True, text=True, timeout=300)
    return dumps


def anomalies(tmp: Path, run_id: str) -> list[dict]:
    done = cli(tmp, "anomalies", run_id, "--format", "json")
    assert done.code == 0, done.err
    return json.loads(done.out)


@pytest.mark.slow
@pytest.mark.parametrize("fault, rank, kind", [("hang", 2, "hang"), ("crash", 1, "crash")])
def test_torch_written_dumps_name_the_culprit(tmp_path: Path, fault: str, rank: int, kind: str) -> None:
    dumps = make_dumps(tmp_path, fault, rank, port=29950 + rank)
    pickles = sorted((dumps / "pickle").iterdir())
    assert len(pickles) == 4, pickles
    for files in (pickles, [dumps / "json"]):  # the pickle files, and a directory of the JSON dumps
        done = cli(tmp_path, "import", "flight-recorder", *map(str, files))
        assert done.code == 0, done.err
        run_id = done.out.strip()
        found = anomalies(tmp_path, run_id)
        assert (found[0]["kind"], found[0]["subject"]) == (kind, f"rank:{rank}"), found
        assert found[0]["evidence"]["process_group"] == "1"  # the training group, not the default one
        if kind == "hang":
            assert found[0]["evidence"]["stuck_seq"] > found[0]["evidence"]["rank_last_seq"] >= 0
    again = cli(tmp_path, "import", "flight-recorder", *map(str, pickles))
    assert again.code == 0
    runs = json.loads(cli(tmp_path, "runs", "--format", "json").out)
    assert len(runs) == 2 and {r["kind"] for r in runs} == {"training"}  # importing again replaced the run


def test_a_pickle_asking_for_code_is_refused(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch pwned",))

    (tmp_path / "fr_trace_0").write_bytes(pickle.dumps({"entries": [Evil()]}))
    assert_one_line_error(cli(tmp_path, "import", "flight-recorder", str(tmp_path / "fr_trace_0")))
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("name, content", [("fr_trace_0.json", b"{not json"), ("fr_trace_0.json", b'{"a": 1}'),
                                           ("no_rank.json", b'{"entries": []}')])
def test_bad_dumps_are_one_clear_line(tmp_path: Path, name: str, content: bytes) -> None:
    (tmp_path / name).write_bytes(content)
    assert_one_line_error(cli(tmp_path, "import", "flight-recorder", str(tmp_path / name)))


def test_two_dumps_of_one_rank_are_refused(tmp_path: Path) -> None:
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "fr_trace_1.json").write_text('{"entries": []}')
    assert_one_line_error(cli(tmp_path, "import", "flight-recorder", str(tmp_path / "a"), str(tmp_path / "b")))
