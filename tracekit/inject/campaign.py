"""Campaign files (TOML): workloads, injection points, fault types, budget; and the experiments they allow.

A campaign names its workloads (``module:function``, a pytest node id, or a command), which injection
points to consider (glob patterns over the names of ``@tracekit.trace``d functions and explicit
``tracekit.fault_point`` names; default every point a profile run reaches), the fault types with
their variants, and the budget. `candidate_experiments` turns the points a workload's profile runs
reached into the experiments (one fault at one point of one workload) a campaign may run.
"""

from __future__ import annotations

import fnmatch
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tracekit.errors import ConfigError
from tracekit.inject.runtime import FAULT_TYPES, Plan

STRATEGIES = ("three-phase", "breadth", "random", "exhaustive")


@dataclass(frozen=True)
class Workload:
    """One test a campaign runs: `target` is ``module:function`` or a pytest node id; or `command` argv."""

    name: str
    target: str | None = None
    command: tuple[str, ...] = ()

    def argv(self, python: str) -> list[str]:
        if self.command:
            return [python if part == "{python}" else part for part in self.command]
        if self.target is None:
            raise ConfigError(f"workload {self.name!r} has neither a target nor a command")
        if "::" in self.target or self.target.endswith(".py"):
            return [python, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", self.target]
        return [python, "-m", "tracekit.inject.workload", self.target]


@dataclass(frozen=True)
class PointInfo:
    """An injection point as profile runs saw it: where it was called from and what it returned."""

    point: str
    kind: str  # traced | explicit
    parents: tuple[str | None, ...] = ()
    returns: str | None = None
    raises: str | None = None
    loop: bool = False  # called more than once per parent call in a profile run
    calls: float = 0.0  # mean calls per profile run
    spread: int = 0  # max - min calls per run across profile repeats (timing-dependent repetition)
    below: int = 0  # distinct points called beneath it (directly or not)
    inside: tuple[str, ...] = ()  # points whose spans ran within its spans (any process): where its exceptions may come from
    between: bool = False  # runs after some of its caller's other calls and before others: its exception leaves work half done


@dataclass(frozen=True)
class Experiment:
    """One fault at one point of one workload; run `injection_repeats` times."""

    workload: str
    point: str
    fault: str
    exception: str | None = None
    delay_ms: int = 0
    busy: bool = False
    attempt: int = 0  # > 0: a confirmation of an edge the first runs saw in some repeats only

    @property
    def fault_name(self) -> str:
        return f"{self.point}:{self.fault}"

    @property
    def base(self) -> "Experiment":
        """The experiment itself, whichever attempt this is."""
        return replace(self, attempt=0) if self.attempt else self

    @property
    def label(self) -> str:
        variant = {"raise": self.exception or "", "delay": f"{self.delay_ms}ms{' busy' if self.busy else ''}"}
        extra = variant.get(self.fault, "")
        again = f" (confirm {self.attempt})" if self.attempt else ""
        return f"{self.workload}/{self.fault_name}" + (f"[{extra}]" if extra else "") + again

    def plan(self, campaign_id: str) -> Plan:
        return Plan(
            campaign=campaign_id, test=self.workload, mode="inject", point=self.point, fault=self.fault,
            exception=self.exception, delay_ms=self.delay_ms, busy=self.busy,
        )


@dataclass(frozen=True)
class Campaign:
    """A parsed campaign file."""

    name: str
    path: Path
    root: Path
    workloads: tuple[Workload, ...]
    fault_types: tuple[str, ...] = FAULT_TYPES
    delays_ms: tuple[int, ...] = (300,)
    busy_delays_ms: tuple[int, ...] = ()
    exception: str = "RuntimeError"
    include: tuple[str, ...] = ("*",)
    exclude: tuple[str, ...] = ()
    modules: tuple[str, ...] = ()  # zero-code points: every function of these modules (glob patterns)
    raises: dict[str, str] = field(default_factory=dict)
    budget: int = 100
    profile_repeats: int = 3
    injection_repeats: int = 2
    timeout_s: float = 30.0
    strategy: str = "three-phase"
    seed: int = 0
    ground_truth: dict[str, Any] = field(default_factory=dict)

    def wants(self, point: str) -> bool:
        return any(fnmatch.fnmatchcase(point, p) for p in self.include) and not any(
            fnmatch.fnmatchcase(point, p) for p in self.exclude
        )

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name, "root": str(self.root),
            "workloads": [{"name": w.name, "target": w.target, "command": list(w.command)} for w in self.workloads],
            "fault_types": list(self.fault_types), "delays_ms": list(self.delays_ms),
            "busy_delays_ms": list(self.busy_delays_ms),
            "exception": self.exception, "include": list(self.include), "exclude": list(self.exclude),
            "modules": list(self.modules),
            "raises": self.raises, "profile_repeats": self.profile_repeats,
            "injection_repeats": self.injection_repeats, "timeout_s": self.timeout_s, "seed": self.seed,
        }


def _tuple(value: Any, what: str, kind: type) -> tuple[Any, ...]:
    if isinstance(value, kind):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, kind) for v in value):
        raise ConfigError(f"{what} must be a {kind.__name__} or a list of them")
    return tuple(value)


def load_campaign(path: str | Path, *, name: str | None = None, strategy: str | None = None) -> Campaign:
    """Parse and validate a campaign file (`name`, `strategy` override the file's); every problem is a
    ConfigError naming the key."""
    path, override = Path(path), name
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"campaign file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    head = data.get("campaign", {})
    if not isinstance(head, dict):
        raise ConfigError(f"{path}: [campaign] must be a table")
    workloads = []
    for i, raw in enumerate(data.get("workload", [])):
        name = raw.get("name") or f"w{i}"
        target, command = raw.get("target"), raw.get("command")
        if bool(target) == bool(command):
            raise ConfigError(f"{path}: workload {name!r} needs exactly one of `target` or `command`")
        if target and ":" not in target and not target.endswith(".py"):
            raise ConfigError(f"{path}: workload {name!r}: target {target!r} is not module:function or a pytest node id")
        workloads.append(Workload(name, target, _tuple(command, "command", str) if command else ()))
    if not workloads:
        raise ConfigError(f"{path}: no [[workload]] entries: a campaign needs at least one test to run")
    if len({w.name for w in workloads}) != len(workloads):
        raise ConfigError(f"{path}: workload names must be unique")
    faults = data.get("faults", {})
    types = _tuple(faults.get("types", list(FAULT_TYPES)), "faults.types", str)
    unknown = [t for t in types if t not in FAULT_TYPES]
    if unknown:
        raise ConfigError(f"{path}: unknown fault types {unknown}: use {', '.join(FAULT_TYPES)}")
    points = data.get("points", {})
    if override is not None and not override.strip():
        raise ConfigError("--name must not be empty")
    strategy = strategy or str(head.get("strategy", "three-phase"))
    if strategy not in STRATEGIES:
        raise ConfigError(f"{path}: strategy {strategy!r} is not one of {', '.join(STRATEGIES)}")
    campaign = Campaign(
        name=override or str(head.get("name") or path.stem), path=path.absolute(),
        root=(path.parent / str(head.get("root", "."))).resolve(),
        workloads=tuple(workloads), fault_types=types,
        delays_ms=_tuple(faults.get("delays_ms", [300]), "faults.delays_ms", int),
        busy_delays_ms=_tuple(faults.get("busy_delays_ms", []), "faults.busy_delays_ms", int),
        exception=str(faults.get("exception", "RuntimeError")),
        include=_tuple(points.get("include", ["*"]), "points.include", str),
        exclude=_tuple(points.get("exclude", []), "points.exclude", str),
        modules=_tuple(points.get("modules", []), "points.modules", str),
        raises={str(k): str(v) for k, v in dict(points.get("raises", {})).items()},
        budget=int(head.get("budget", 100)), profile_repeats=int(head.get("profile_repeats", 3)),
        injection_repeats=int(head.get("injection_repeats", 2)), timeout_s=float(head.get("timeout_s", 30)),
        strategy=strategy, seed=int(head.get("seed", 0)), ground_truth=dict(data.get("ground_truth", {})),
    )
    if campaign.profile_repeats < 2 or campaign.injection_repeats < 2:
        raise ConfigError(f"{path}: profile_repeats and injection_repeats must be at least 2")
    if campaign.timeout_s <= 0:
        raise ConfigError(f"{path}: timeout_s must be positive")
    return campaign


def candidate_experiments(campaign: Campaign, workload: str, points: list[PointInfo]) -> list[Experiment]:
    """Every experiment the campaign allows at the points one workload reached, primary fault first per point.

    raise: every point (the exception the campaign names for the point, else the one an explicit
    point declares, else the campaign default); delay: every point, each sleeping and each busy
    duration; error_return:
    points that return a bool (the check is negated); drop: points that return nothing or a bool.
    """
    out: list[Experiment] = []
    for info in sorted(points, key=lambda p: p.point):
        if not campaign.wants(info.point):
            continue
        options: list[Experiment] = []
        for fault in campaign.fault_types:
            if fault == "raise":
                exc = campaign.raises.get(info.point) or info.raises or campaign.exception
                options.append(Experiment(workload, info.point, "raise", exception=exc))
            elif fault == "delay":
                options.extend(
                    Experiment(workload, info.point, "delay", delay_ms=ms)
                    for ms in sorted(campaign.delays_ms, reverse=True)
                )
                options.extend(
                    Experiment(workload, info.point, "delay", delay_ms=ms, busy=True)
                    for ms in sorted(campaign.busy_delays_ms, reverse=True)
                )
            elif fault == "error_return" and info.returns == "bool":
                options.append(Experiment(workload, info.point, "error_return"))
            elif fault == "drop" and info.returns in (None, "bool"):
                options.append(Experiment(workload, info.point, "drop"))
        options.sort(key=lambda e: 0 if e.fault == primary_fault(info) else 1)
        out.extend(options)
    return out


def primary_fault(info: PointInfo) -> str:
    """The fault a point is tried with first (CSnake's point kinds).

    A boolean check is negated; an explicit point that declares an exception (a throw site) raises
    it; anything else is delayed (the longest sleeping delay), the probe that reveals most: timeouts,
    retries and loops that spin longer all show up as consequences of a delay.
    """
    if info.returns == "bool":
        return "error_return"
    if info.kind == "explicit" and info.raises:
        return "raise"
    return "delay"
