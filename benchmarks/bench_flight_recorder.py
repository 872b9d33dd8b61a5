"""Flight Recorder dumps: does `tracekit anomalies` name the hung / crashed rank, side by side with `torchfrtrace`?

    python benchmarks/bench_flight_recorder.py                    # hang and crash x ranks {1, world-1} x worlds 4, 8
    python benchmarks/bench_flight_recorder.py --worlds 4 --faults hang

Each case runs fixtures/fr_job.py under plain torchrun (no tracekit; gloo, ring buffer on, torch writes
the dumps), imports the pickle dumps with `tracekit import flight-recorder` and takes the top finding
of `tracekit anomalies`; then runs PyTorch's own analyser `torchfrtrace` on the same pickle files, as
written and with their empty gloo process-group configuration filled in (without it torchfrtrace
fails on gloo dumps), and reads the ranks it reports missing. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
JOB = ROOT / "fixtures" / "fr_job.py"
sys.path.insert(0, str(ROOT / "benchmarks"))
from _common import final_line  # noqa: E402


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACEKIT_")}
    env.update(TORCH_FR_BUFFER_SIZE="2000", OMP_NUM_THREADS="1", TRACEKIT_DISABLED="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    return env


def tracekit_verdict(tmp: Path, dumps: Path) -> dict:
    env = {**_env(), "TRACEKIT_DB": str(tmp / "t.duckdb")}
    env.pop("TRACEKIT_DISABLED")
    run_id = subprocess.run([sys.executable, "-m", "tracekit", "import", "flight-recorder", str(dumps)], env=env,
                            capture_output=True, text=True, check=True).stdout.strip()
    found = json.loads(subprocess.run([sys.executable, "-m", "tracekit", "anomalies", run_id, "--format", "json"],
                                      env=env, capture_output=True, text=True, check=True).stdout)
    if not found:
        return {"kind": None, "subject": None}
    top = found[0]
    return {"kind": top["kind"], "subject": top["subject"], "group": top["evidence"].get("process_group"),
            "seq": top["evidence"].get("stuck_seq"), "confidence": top["confidence"]}


def fill_pg_config(src: Path, dst: Path, world: int) -> None:
    """A copy of the dumps with the process-group configuration gloo leaves empty (every group: all ranks)."""
    dst.mkdir()
    for path in src.iterdir():
        with path.open("rb") as fh:
            dump = pickle.load(fh)  # our own fixture's dumps: trusted
        groups = {}
        for entry in dump["entries"]:
            name, desc = entry["process_group"]
            groups[name] = {"name": name, "desc": desc, "ranks": str(list(range(world)))}
        dump["pg_config"] = groups
        with (dst / path.name).open("wb") as fh:
            pickle.dump(dump, fh)


def torchfrtrace_verdict(dumps: Path) -> dict:
    done = subprocess.run(["torchfrtrace", str(dumps), "--prefix", "fr_trace_"], capture_output=True, text=True,
                          timeout=300)
    text = done.stdout + done.stderr
    missing = re.findall(r"missing ranks: \{([\d, ]+)\}", text)
    seq = re.findall(r"sequence number: (\d+)", text)
    if done.returncode != 0 and not missing:
        last = [ln for ln in text.strip().splitlines() if ln.strip()][-1:] or ["?"]
        return {"missing_ranks": None, "error": last[0][:160]}
    ranks = sorted({int(r) for group in missing for r in group.split(",") if r.strip()})
    return {"missing_ranks": ranks, "seq": int(seq[0]) if seq else None}


def one_case(fault: str, world: int, rank: int, port: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="tk-fr-") as raw:
        tmp = Path(raw)
        subprocess.run(["torchrun", "--nproc-per-node", str(world), "--master-port", str(port), "--monitor-interval",
                        "2", str(JOB), "--dump-dir", str(tmp / "dumps"), "--fault", fault, "--fault-rank", str(rank),
                        "--steps", "20", "--fault-step", "8"], env=_env(), capture_output=True, text=True, timeout=600)
        pickles = tmp / "dumps" / "pickle"
        ours = tracekit_verdict(tmp, pickles)
        theirs_raw = torchfrtrace_verdict(pickles)
        fill_pg_config(pickles, tmp / "filled", world)
        theirs = torchfrtrace_verdict(tmp / "filled")
    return {"fault": fault, "world": world, "rank": rank,
            "tracekit": ours, "tracekit_correct": (ours["kind"], ours["subject"]) == (fault, f"rank:{rank}"),
            "torchfrtrace_as_written": theirs_raw, "torchfrtrace_filled": theirs,
            "torchfrtrace_correct": theirs.get("missing_ranks") == [rank]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--worlds", default="4,8")
    p.add_argument("--faults", default="hang,crash")
    args = p.parse_args()
    results = []
    port = 29700
    for world in map(int, args.worlds.split(",")):
        for fault in args.faults.split(","):
            for rank in (1, world - 1):
                port += 1
                r = one_case(fault, world, rank, port)
                results.append(r)
                print(f"{fault:<5} world {world} rank {rank}: tracekit {r['tracekit']['kind']} {r['tracekit']['subject']} "
                      f"(group {r['tracekit'].get('group')}, seq {r['tracekit'].get('seq')}) "
                      f"{'OK' if r['tracekit_correct'] else 'WRONG'} | torchfrtrace as written: "
                      f"{r['torchfrtrace_as_written']} | filled: missing {r['torchfrtrace_filled'].get('missing_ranks')} "
                      f"seq {r['torchfrtrace_filled'].get('seq')} {'OK' if r['torchfrtrace_correct'] else 'WRONG'}",
                      flush=True)
    final_line(cases=len(results), tracekit_correct=sum(r["tracekit_correct"] for r in results),
               torchfrtrace_filled_correct=sum(r["torchfrtrace_correct"] for r in results),
               torchfrtrace_as_written_ran=sum(r["torchfrtrace_as_written"].get("missing_ranks") is not None
                                               for r in results), results=results)


if __name__ == "__main__":
    main()
