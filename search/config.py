"""`StudyConfig`: one YAML file describes a whole layout search (space, objectives, rungs, storage, Ray).

Everything is validated here, before any worker starts: unknown keys, objective names, sampler, rung proxies
(parsed once, by the proxy's own `ProxyConfig.from_dict`, into the `ProxyConfig` a rung holds from then on), the
storage URL (an RDB is connected to) and the Ray address (a TCP connect). Every error is one line naming the file
and the field.

Relative paths inside the YAML (``space``, rung ``proxy`` files, ``seeds`` layout files) are resolved against the
YAML file's directory first, then the current directory. A relative ``run_dir`` in the YAML is relative to the
YAML file's directory (made absolute on load); without ``run_dir`` the run directory is ``hyla_runs/<name>`` in the
current directory.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from hyla.config import ConfigError, did_you_mean, from_mapping, load_yaml, to_mapping
from hyla.metrics import METRICS
from hyla.proxy_train.proxy.config import PROXY_PRESETS, ProxyConfig

SAMPLERS = ("tpe", "nsga2", "gp", "random")
FULL_SCALES = ("340m", "1.3b")


@dataclass(frozen=True, kw_only=True, slots=True)
class PromoteConfig:
    """Which trials of a rung go on to the next rung (or to full runs after the last rung).

    Attributes:
        rule: ``pareto`` = non-dominated sorting, the overflowing front cut knee first, then spread
            (`hyla.search.rungs`); ``topk`` = best by one objective.
        k: at most this many trials are promoted.
        objective: the objective ranked by ``topk`` (default: the first objective).
        noise: compare trials by intervals ``mean ± noise_z · s.e.m.`` of their seeds (``hyla.search.rungs``),
            so a layout dominated only within the seed noise stays a candidate; False = exact means.
        noise_z: interval half-width in standard errors.
    """

    rule: str = field(default="pareto", metadata={"choices": ("pareto", "topk")})
    k: int = 3
    objective: str | None = None
    noise: bool = True
    noise_z: float = 2.0


@dataclass(frozen=True, kw_only=True, slots=True)
class RungConfig:
    """One fidelity level: every trial of the rung is trained with ``proxy``.

    Attributes:
        proxy: the rung's proxy recipe. In YAML: a proxy preset name (``tiny``), a proxy YAML path (relative to the
            study file's folder, then the current directory) or an inline mapping of ProxyConfig fields; parsed
            once when the study is loaded (`parse_rung_proxies`).
        promote: the promotion rule to the next rung.
    """

    proxy: ProxyConfig = field(default_factory=lambda: ProxyConfig.load("tiny"))
    promote: PromoteConfig = field(default_factory=PromoteConfig)


@dataclass(frozen=True, kw_only=True, slots=True)
class FullRunsConfig:
    """Full-scale runs of the last rung's promotion set: specs are always written, jobs submitted if enabled."""

    enabled: bool = False
    scales: list[str] = field(default_factory=lambda: ["340m", "1.3b"])
    tokens: float | None = None  # None = the scale's default budget (20B for 340m, 100B for 1.3b)


@dataclass(frozen=True, kw_only=True, slots=True)
class RayConfig:
    """Where proxies run.

    Attributes:
        address: None = start a local Ray; else ``ray://host:port``, ``host:port`` or ``auto``.
        num_workers: warm ProxyWorker actors (= trials in flight).
        cpus_per_worker: CPUs reserved per actor.
        gpus_per_worker: GPUs per actor; fractional values pack several proxies on one GPU.
    """

    address: str | None = None
    num_workers: int = 2
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0


@dataclass(frozen=True, kw_only=True, slots=True)
class StudyConfig:
    """A layout search. See examples/quickstart.yaml for a commented example.

    Attributes:
        name: study name; rung r is stored as the Optuna study ``"<name>/rung<r>"``.
        run_dir: proxy run directories, the journal file, full-run specs and the analysis outputs (default
            ``hyla_runs/<name>`` in the current directory; relative to the YAML file's directory when given there).
        storage: None = a journal file ``run_dir/study.journal``; else an Optuna RDB URL (sqlite/postgresql/...).
        space: inline SearchSpace mapping or a path to a space YAML.
        objectives: metric names from `hyla.metrics.METRICS`, the order of the trial values.
        context: sequence length at which kv_bytes/memory_bytes are measured.
        sampler, seed: the Optuna sampler of rung 0 (later rungs only replay promoted layouts).
        n_trials: rung-0 trials to finish (completed + failed).
        rungs: fidelity levels; rung 0 takes all trials, rung r+1 re-runs rung r's promotion set.
        seeds: preset names / layout YAML paths enqueued first at rung 0 (user attr ``preset``).
        seed_grid: ``paper`` enqueues the paper's 31 layouts at the space's scale.
        retries: how often a trial whose worker process died is retried on a fresh worker.
    """

    name: str
    run_dir: str | None = None
    storage: str | None = None
    space: Any = None
    objectives: list[str] = field(default_factory=lambda: ["lm_loss", "recall", "memory_bytes"])
    context: int = 2048
    sampler: str = field(default="tpe", metadata={"choices": SAMPLERS})
    seed: int = 0
    n_trials: int = 10
    rungs: list[RungConfig] = field(default_factory=lambda: [RungConfig()])
    seeds: list[str] = field(default_factory=list)
    full_runs: FullRunsConfig = field(default_factory=FullRunsConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    seed_grid: str | None = field(default=None, metadata={"choices": (None, "paper")})
    retries: int = 1
    source: str = ""  # the YAML file this came from (for messages); not a YAML key

    # -- derived -------------------------------------------------------------------------------------------------
    @property
    def where(self) -> str:
        return self.source or "study config"

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir or f"hyla_runs/{self.name}")

    @property
    def directions(self) -> list[str]:
        return [METRICS[o].direction for o in self.objectives]

    def objective_attrs(self) -> list[dict[str, str]]:
        """The ``objectives`` study user attr: ``[{"name": ..., "direction": ...}]`` in objective order."""
        return [{"name": o, "direction": METRICS[o].direction} for o in self.objectives]

    def study_name(self, rung: int) -> str:
        return f"{self.name}/rung{rung}"

    def storage_url(self) -> str:
        """The storage as given, or the journal file path (prefixed ``journal:``) for the default."""
        return self.storage or f"journal:{self.run_path / 'study.journal'}"

    def to_dict(self) -> dict[str, Any]:
        out = to_mapping({k: getattr(self, k) for k in self.__dataclass_fields__ if k != "source"})
        return out

    def resolve_path(self, value: str) -> Path | None:
        """A relative path is looked up next to the YAML file first, then in the current directory."""
        return resolve_path(value, self.source)


def resolve_path(value: str, source: str = "") -> Path | None:
    """``value`` as an existing path: a relative one is looked up next to the YAML file ``source`` first, then in
    the current directory; None when it exists in neither."""
    p = Path(value)
    if p.is_absolute():
        return p if p.exists() else None
    for base in ([Path(source).parent] if source else []) + [Path.cwd()]:
        if (base / p).exists():
            return base / p
    return None


def parse_rung_proxies(data: dict[str, Any], where: str, source: str) -> dict[str, Any]:
    """``data`` with each rung's ``proxy`` parsed into a `ProxyConfig` (once: the study holds it from then on).

    A preset name, a YAML path (`resolve_path` against ``source``) or a mapping; errors name the file and the rung.
    Anything malformed around it (rungs not a list, a rung not a mapping) is left to `from_mapping`'s messages.
    """
    rungs = data.get("rungs")
    if not isinstance(rungs, list):
        return data
    parsed = []
    for i, rung in enumerate(rungs):
        if isinstance(rung, dict) and "proxy" in rung:
            rung = {**rung, "proxy": _parse_proxy(rung["proxy"], f"{where}: rungs[{i}].proxy", source)}
        parsed.append(rung)
    return {**data, "rungs": parsed}


def _parse_proxy(proxy: Any, where: str, source: str) -> ProxyConfig:
    try:
        if isinstance(proxy, ProxyConfig):
            return proxy
        if isinstance(proxy, dict):
            return ProxyConfig.from_dict(proxy, where=where)
        if isinstance(proxy, str) and proxy in PROXY_PRESETS:
            return ProxyConfig.load(proxy)
        if isinstance(proxy, str):
            path = resolve_path(proxy, source)
            if path is None:
                raise ConfigError(f"{where}: {proxy!r} is neither a preset ({', '.join(PROXY_PRESETS)}) nor an "
                                  "existing file")
            return ProxyConfig.load(path)
    except ConfigError as e:  # the proxy's own checks do not know the study file: name it
        raise (e if str(e).startswith(where) else ConfigError(f"{where}: {e}")) from None
    raise ConfigError(f"{where}: expected a preset name, a path or a mapping, got {type(proxy).__name__}")


def yaml_run_dir(value: Any, yaml_path: str | Path) -> Any:
    """A study YAML's ``run_dir`` as an absolute path: a relative one is taken relative to the YAML's folder, not
    the current directory (anything that is not a non-empty string is returned as it is, for validation)."""
    if not isinstance(value, str) or not value:
        return value
    p = Path(value).expanduser()
    return os.path.abspath(p if p.is_absolute() else Path(yaml_path).parent / p)


def load_study_config(path: str | Path, **overrides: Any) -> StudyConfig:
    """Read and validate a study YAML; ``overrides`` (e.g. n_trials, seed_grid, ray address) win over the file.

    A relative ``run_dir`` in the file is relative to the file's folder (`yaml_run_dir`).
    """
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of study fields, got {type(data).__name__}")
    if "run_dir" in data:
        data = {**data, "run_dir": yaml_run_dir(data["run_dir"], path)}
    return study_config_from_dict(data, where=str(path), **overrides)


def study_config_from_dict(data: dict[str, Any], where: str = "study config", **overrides: Any) -> StudyConfig:
    """Parse and validate a study mapping (see `StudyConfig`)."""
    address = overrides.pop("address", None)
    if "source" in data:
        raise ConfigError(f"{where}: unknown field 'source'")
    data = {**data, **{k: v for k, v in overrides.items() if v is not None}}
    data = parse_rung_proxies(data, where, where if where != "study config" else "")
    cfg = from_mapping(StudyConfig, data, where)
    cfg = replace(cfg, source=where if where != "study config" else "")
    if address is not None:
        cfg = replace(cfg, ray=replace(cfg.ray, address=address))
    validate(cfg)
    return cfg


def validate(cfg: StudyConfig) -> None:
    """Field checks that need no I/O beyond reading referenced files (storage/Ray checks: `check_reachable`)."""
    w = cfg.where
    if not cfg.name or "/" in cfg.name:
        raise ConfigError(f"{w}: name: {cfg.name!r} must be a non-empty string without '/'")
    if not cfg.objectives:
        raise ConfigError(f"{w}: objectives: empty; expected a subset of {', '.join(METRICS)}")
    for o in cfg.objectives:
        if o not in METRICS:
            raise ConfigError(f"{w}: objectives: unknown objective {o!r}{did_you_mean(o, METRICS)}; expected a "
                              f"subset of {', '.join(METRICS)}")
    if len(set(cfg.objectives)) != len(cfg.objectives):
        raise ConfigError(f"{w}: objectives: {cfg.objectives} lists an objective twice")
    for name, lo in (("context", 1), ("n_trials", 0), ("retries", 0)):
        if getattr(cfg, name) < lo:
            raise ConfigError(f"{w}: {name}: {getattr(cfg, name)} must be >= {lo}")
    if not cfg.rungs:
        raise ConfigError(f"{w}: rungs: empty; expected at least one rung")
    for i, rung in enumerate(cfg.rungs):
        p = rung.promote
        if p.k < 1:
            raise ConfigError(f"{w}: rungs[{i}].promote.k: {p.k} must be >= 1")
        if p.noise_z < 0:
            raise ConfigError(f"{w}: rungs[{i}].promote.noise_z: {p.noise_z} must be >= 0 (standard errors)")
        if p.objective is not None and p.objective not in cfg.objectives:
            raise ConfigError(f"{w}: rungs[{i}].promote.objective: {p.objective!r} is not one of the study "
                              f"objectives {cfg.objectives}{did_you_mean(p.objective, cfg.objectives)}")
    for s in cfg.full_runs.scales:
        if s not in FULL_SCALES:
            raise ConfigError(f"{w}: full_runs.scales: {s!r} is not allowed; expected any of {', '.join(FULL_SCALES)}")
    r = cfg.ray
    if r.num_workers < 1:
        raise ConfigError(f"{w}: ray.num_workers: {r.num_workers} must be >= 1")
    if r.cpus_per_worker <= 0 or r.gpus_per_worker < 0:
        raise ConfigError(f"{w}: ray: cpus_per_worker {r.cpus_per_worker} must be > 0 and gpus_per_worker "
                          f"{r.gpus_per_worker} >= 0")
    if r.gpus_per_worker > 1 and not float(r.gpus_per_worker).is_integer():
        raise ConfigError(f"{w}: ray.gpus_per_worker: {r.gpus_per_worker}; above 1 it must be a whole number")
    if cfg.storage is not None:
        scheme = urlparse(cfg.storage).scheme
        if not scheme or "://" not in cfg.storage:
            raise ConfigError(f"{w}: storage: {cfg.storage!r} is not an RDB URL; expected e.g. sqlite:///study.db, "
                              "postgresql://user@host/db, or leave it out for a journal file in run_dir")


def check_ray_address(cfg: StudyConfig) -> None:
    """A TCP connect to the Ray address (``auto`` and local Ray are not checked here)."""
    addr = cfg.ray.address
    if not addr or addr == "auto":
        return
    parsed = urlparse(addr if "://" in addr else f"ray://{addr}")
    host, port = parsed.hostname, parsed.port
    if not host or not port:
        raise ConfigError(f"{cfg.where}: ray.address: {addr!r} has no host:port; expected ray://host:10001 or "
                          "host:6379 or auto")
    try:
        with socket.create_connection((host, port), timeout=3):
            pass
    except OSError as e:
        raise ConfigError(f"{cfg.where}: ray.address: {addr!r} does not answer ({e.strerror or e})") from None
