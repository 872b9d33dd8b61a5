"""`@tracekit.trace` on generators and async generators: send, throw and close reach the body."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager, contextmanager

import pytest

import tracekit


def test_contextmanager_over_a_traced_generator_sees_the_block_s_exception():
    """Guards the bug where the wrapper dropped throw(): the body never saw the `with` block's error,
    so a @contextmanager that handles it could not suppress it."""
    log: list[str] = []

    @contextmanager
    @tracekit.trace
    def guarded():
        log.append("enter")
        try:
            yield "resource"
        except KeyError as exc:
            log.append(f"handled {exc}")
        finally:
            log.append("exit")

    with guarded() as res:
        assert res == "resource"
        raise KeyError("k")
    assert log == ["enter", "handled 'k'", "exit"]

    with pytest.raises(ValueError):  # an error the body does not handle still propagates
        with guarded():
            raise ValueError("v")
    assert log[-1] == "exit"


def test_send_throw_close_and_the_return_value_pass_through():
    log: list[object] = []

    @tracekit.trace(name="echo")
    def echo():
        received = yield "ready"
        while True:
            try:
                received = yield f"got {received}"
            except ValueError:
                received = yield "recovered"
            except GeneratorExit:
                log.append("closed")
                raise

    g = echo()
    assert next(g) == "ready"
    assert g.send(1) == "got 1"
    assert g.throw(ValueError("x")) == "recovered"
    assert g.send(2) == "got 2"
    g.close()
    assert log == ["closed"]

    @tracekit.trace
    def inner():
        yield 1
        return "result"

    def outer():
        return (yield from inner())

    o = outer()
    assert next(o) == 1
    with pytest.raises(StopIteration) as stop:
        next(o)
    assert stop.value.value == "result"


def test_asynccontextmanager_and_athrow_aclose_asend_pass_through():
    log: list[str] = []

    @asynccontextmanager
    @tracekit.trace
    async def guarded():
        try:
            yield "conn"
        except KeyError:
            log.append("handled")
        finally:
            log.append("exit")

    @tracekit.trace(name="aecho")
    async def aecho():
        received = yield "ready"
        while True:
            try:
                received = yield f"got {received}"
            except ValueError:
                received = yield "recovered"
            except GeneratorExit:
                log.append("closed")
                raise

    async def main() -> list[object]:
        async with guarded() as conn:
            assert conn == "conn"
            raise KeyError("k")
        g = aecho()
        seen = [await g.asend(None), await g.asend(1), await g.athrow(ValueError("x")), await g.asend(2)]
        await g.aclose()
        return seen

    assert asyncio.run(main()) == ["ready", "got 1", "recovered", "got 2"]
    assert log == ["handled", "exit", "closed"]


def test_an_exception_raised_by_a_traced_generator_propagates_unchanged():
    @tracekit.trace
    def broken():
        yield 1
        raise LookupError("gone")

    g = broken()
    assert next(g) == 1
    with pytest.raises(LookupError, match="gone"):
        next(g)
