"""Put on PYTHONPATH by `tracekit record`: starts capture in every Python process of the recorded command."""

try:
    from tracekit.capture.setup import init_from_env as _tk_init_from_env

    if _tk_init_from_env() is not None:
        # torch.distributed is instrumented when (and only if) this process imports it
        from tracekit.capture.torch import install_import_hook as _tk_torch_hook

        _tk_torch_hook()
except Exception as _tk_exc:  # capture must never stop the recorded program
    import sys as _tk_sys

    print(f"tracekit: capture is off in this process: {_tk_exc}", file=_tk_sys.stderr)
