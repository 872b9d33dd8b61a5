"""Put on PYTHONPATH of campaign runs that name `[points] modules`: capture's autostart, then the zero-code point hook."""

try:
    import os as _tk_os
    import runpy as _tk_runpy

    import tracekit.capture as _tk_capture

    _tk_runpy.run_path(_tk_os.path.join(_tk_os.path.dirname(_tk_capture.__file__), "autostart", "sitecustomize.py"))
    from tracekit.inject.modules import install_from_env as _tk_install_modules

    _tk_install_modules()
except Exception as _tk_exc:  # capture must never stop the program under test
    import sys as _tk_sys

    print(f"tracekit: zero-code injection points are off in this process: {_tk_exc}", file=_tk_sys.stderr)
