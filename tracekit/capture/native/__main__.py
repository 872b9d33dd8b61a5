"""python -m tracekit.capture.native [--build] [--verbose] [--format json]: build or locate the native DDP hook."""

from __future__ import annotations

import argparse
import json
import sys
import time

from tracekit.capture import native


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tracekit.capture.native", description=__doc__)
    parser.add_argument("--build", action="store_true", help="compile the extension if it is not built yet")
    parser.add_argument("--verbose", action="store_true", help="show the compiler's output")
    parser.add_argument("--format", choices=("text", "json"), default="text")
    args = parser.parse_args(argv)
    try:
        import torch  # noqa: F401
    except ImportError:
        print("tracekit: the native DDP hook needs torch; install tracekit[torch] first", file=sys.stderr)
        return 2
    path = native.library_path()
    built_now, seconds = False, 0.0
    if args.build and not path.is_file():
        print(f"tracekit: compiling the native DDP hook into {path.parent} (about a minute) ...", file=sys.stderr)
        start = time.perf_counter()
        try:
            native.build(verbose=args.verbose)
        except Exception as exc:  # noqa: BLE001 - report the compiler's failure, not a traceback
            print(f"tracekit: building the native DDP hook failed: {exc}\n"
                  "  it needs g++ and ninja (apt-get install g++ ninja-build, or pip install ninja); "
                  "capture falls back to the Python hook", file=sys.stderr)
            return 1
        built_now, seconds = True, time.perf_counter() - start
    module = native.load()
    status = {"library": str(path), "built": path.is_file(), "loads": module is not None,
              "built_now": built_now, "build_seconds": round(seconds, 1), "error": native.load_error()}
    if args.format == "json":
        print(json.dumps(status))
    elif module is not None:
        print(f"native DDP hook: {path}" + (f" (built in {seconds:.0f} s)" if built_now else ""))
    else:
        print(f"native DDP hook: not available: {native.load_error()}")
    return 0 if module is not None else 1


if __name__ == "__main__":
    sys.exit(main())
