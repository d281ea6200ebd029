"""Everything resolved before a search starts work, and the full-run stage after the last rung.

`prepare` turns a `StudyConfig` into a `Prepared`: the SearchSpace, each rung's ProxyConfig (parsed when the study
was loaded; here its data sources are checked, so a missing corpus fails here and not in a worker), seed layouts,
the opened storage (an RDB is connected to) and a checked Ray address. Only then does `run_search` start Ray.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from hyla.config import ConfigError, dump_yaml
from hyla.proxy_train.proxy.config import ProxyConfig, score_needs
from hyla.search.config import StudyConfig, check_ray_address
from hyla.search.storage import open_storage


@dataclass
class Prepared:
    """A validated study: config plus the objects built from it."""

    cfg: StudyConfig
    space: Any
    storage: Any
    proxies: list[ProxyConfig]
    proxy_paths: list[Path]
    seed_layouts: list[tuple[str, Any]] = field(default_factory=list)

    @property
    def run_path(self) -> Path:
        return self.cfg.run_path

    def study_attrs(self, rung: int) -> dict[str, Any]:
        """Study user attrs per the storage contract (config, objectives, space_key) plus the rung."""
        return {"config": self.cfg.to_dict(), "space_key": self.space.key(), "rung": rung,
                "objectives": self.cfg.objective_attrs(),
                "proxy": self.proxies[rung].to_dict()}

    def sampler(self, rung: int) -> optuna.samplers.BaseSampler:
        """Rung 0 uses the configured sampler; later rungs only replay enqueued trials (any sampler would do)."""
        seed = self.cfg.seed + rung
        name = self.cfg.sampler if rung == 0 else "random"
        if name == "tpe":
            return optuna.samplers.TPESampler(seed=seed)
        if name == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed)
        if name == "gp":
            return optuna.samplers.GPSampler(seed=seed)
        return optuna.samplers.RandomSampler(seed=seed)


def _load_space(cfg: StudyConfig) -> Any:
    try:
        return _read_space(cfg)
    except ConfigError as e:  # SearchSpace's own checks do not know the file: name it
        raise (e if str(e).startswith(cfg.where) else ConfigError(f"{cfg.where}: space: {e}")) from None


def _read_space(cfg: StudyConfig) -> Any:
    from hyla.space.search_space import SearchSpace, load_space

    if cfg.space is None:
        raise ConfigError(f"{cfg.where}: space: missing; expected an inline search-space mapping or a YAML path")
    if isinstance(cfg.space, str):
        path = cfg.resolve_path(cfg.space)
        if path is None:
            raise ConfigError(f"{cfg.where}: space: file {cfg.space!r} not found")
        return load_space(path)
    if isinstance(cfg.space, dict):
        return SearchSpace.from_dict(cfg.space, where=f"{cfg.where}: space")
    raise ConfigError(f"{cfg.where}: space: expected a mapping or a path, got {type(cfg.space).__name__}")


def with_study_space(proxy: ProxyConfig, space: Any) -> ProxyConfig:
    """A recall family that covers the study's space (``supernet``: ``recall.space``) gets the study's own space
    when its config leaves it unset."""
    recall = proxy.recall
    if recall is None or "space" not in {f.name for f in dataclasses.fields(recall)} or recall.space is not None:
        return proxy
    return dataclasses.replace(proxy, recall=dataclasses.replace(recall, space=space))


def _check_objectives_scored(cfg: StudyConfig, proxies: list[ProxyConfig]) -> None:
    """Every measured objective must be a score each rung's proxy fills (`ProxyConfig.scores`): e.g. ``lm_loss``
    needs an LM run, ``recall_auc`` the recall probe. Refused here, before any trial runs."""
    from hyla.metrics import METRICS

    for r, proxy in enumerate(proxies):
        scores = proxy.scores
        for name in cfg.objectives:
            metric = METRICS[name]
            if not metric.exact and metric.field not in scores:
                raise ConfigError(f"{cfg.where}: objectives: {name} is not measured by rungs[{r}].proxy (it gives "
                                  f"{', '.join(sorted(scores)) or 'no scores'}); {name} needs "
                                  f"{score_needs(metric.field)}")


def _check_data_sources(cfg: StudyConfig, rung: int) -> None:
    """A missing local corpus or an unloadable tokenizer fails here, not in a worker after the study was created.

    Cheap checks only (`hyla.proxy_train.train.text.check_text_source`): a hub corpus is not streamed here, a local path
    must exist and hold text files, and the tokenizer is loaded (local files first; the hub only when reachable).
    """
    try:
        _check_text(cfg.rungs[rung].proxy)
    except ConfigError as e:
        where = f"{cfg.where}: rungs[{rung}].proxy"
        raise (e if str(e).startswith(cfg.where) else ConfigError(f"{where}: {e}")) from None


def _check_text(pc: ProxyConfig) -> None:
    from hyla.proxy_train.train.text import check_text_source, get_tokenizer  # torch

    check_text_source(pc.text)
    get_tokenizer(pc.tokenizer)


def _seed_layouts(cfg: StudyConfig, space: Any) -> list[tuple[str, Any]]:
    from hyla.space.presets import paper_grid, resolve_preset
    from hyla.space.layout import Layout

    scale = getattr(space, "scale", None)
    scale = getattr(scale, "name", scale)
    out: list[tuple[str, Any]] = []
    for i, s in enumerate(cfg.seeds):
        path = cfg.resolve_path(s) if s.endswith((".yaml", ".yml")) else None
        if path is not None:
            try:
                lay = Layout.load(path)
            except ConfigError as e:
                msg = str(e) if str(e).startswith(str(path)) else f"{path}: {e}"
                raise ConfigError(f"{cfg.where}: seeds[{i}]: {msg}") from None
            out.append((lay.name or path.stem, lay))
        else:
            try:
                lay = resolve_preset(s, default_scale=scale or "340m")
            except ConfigError as e:
                raise ConfigError(f"{cfg.where}: seeds[{i}]: {e}") from None
            out.append((lay.name or s, lay))
    if cfg.seed_grid == "paper":
        out.extend((lay.name, lay) for lay in paper_grid(scale or "340m"))
    return out


def layout_params(prep: Prepared, layout: Any, preset: str) -> dict[str, Any] | None:
    """The param dict that makes suggest_layout reproduce ``layout``; None (with a note) if outside the space."""
    from hyla.space.search_space import layout_to_params

    try:
        return layout_to_params(layout, prep.space)
    except ConfigError as e:
        print(f"hyla search: seed {preset} skipped, not in the search space: {e}")
        return None


def _refuse_name_clash(cfg: StudyConfig, storage: Any, space: Any) -> None:
    """An existing study of this name with another space/objectives is refused before study.yaml is rewritten."""
    from hyla.search.storage import check_compatible, existing_study_attrs

    attrs = {"space_key": space.key(), "objectives": cfg.objective_attrs()}
    for rung in range(len(cfg.rungs)):
        have = existing_study_attrs(storage, cfg.study_name(rung))
        if have is not None:
            check_compatible(cfg.study_name(rung), have, attrs, where=cfg.where)


def prepare(cfg: StudyConfig) -> Prepared:
    """Validate and resolve everything a search needs; nothing is trained and Ray is not started.

    Raises:
        ConfigError: any bad field, missing file, unreachable storage or Ray address (one line, file and field).
    """
    space = _load_space(cfg)
    proxies = [with_study_space(rung.proxy, space) for rung in cfg.rungs]
    for r in range(len(cfg.rungs)):
        _check_data_sources(cfg, r)
    _check_objectives_scored(cfg, proxies)
    seeds = _seed_layouts(cfg, space)
    for preset, lay in seeds:
        from hyla.space.search_space import layout_to_params

        try:
            layout_to_params(lay, space)
        except ConfigError as e:
            if cfg.seeds and preset in cfg.seeds:
                raise ConfigError(f"{cfg.where}: seeds: {preset!r} is not in the search space: {e}") from None
    if cfg.full_runs.enabled:  # training at full scale must not fail after the whole search
        for scale in cfg.full_runs.scales:
            if err := full_scale_problem(space, scale):
                raise ConfigError(f"{cfg.where}: full_runs.scales: {scale}: {err}")
    check_ray_address(cfg)
    storage = open_storage(cfg.storage_url(), where=f"{cfg.where}: storage")
    _refuse_name_clash(cfg, storage, space)
    run = cfg.run_path
    try:
        run.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"{cfg.where}: run_dir: cannot create {str(run)!r}: {e.strerror or e}") from None
    paths = []
    for r, proxy in enumerate(proxies):
        paths.append(run / f"proxy_rung{r}.yaml")
        dump_yaml(proxy.to_dict(), paths[-1])
    dump_yaml(cfg.to_dict(), run / "study.yaml")
    return Prepared(cfg=cfg, space=space, storage=storage, proxies=proxies, proxy_paths=paths, seed_layouts=seeds)


def full_scale_problem(space: Any, scale: str) -> str:
    """Why the space's layouts cannot be carried to ``scale`` (`hyla.space.presets.at_scale`), or ``""``.

    Checks one layout per (mixer, head-wise heads) choice at the space's depth: depth, head shares and the fixed
    mixer options are all that ``at_scale`` can refuse.
    """
    from hyla.space.layout import LayerSpec
    from hyla.space.presets import at_scale

    for mixer in space.mixers:
        for k in space.headwise.heads:
            spec = LayerSpec(mixer=mixer, attn_heads=k, options=space.mixer_options.get(mixer, {}))
            try:
                at_scale(space.base_layout([spec] * space.depth), scale)
            except ConfigError as e:
                return str(e)
    return ""


def full_runs(prep: Prepared, last: optuna.Study, console: Any = None, first: optuna.Study | None = None) -> list[str]:
    """Write a full-run spec per (promoted trial of the last rung, scale); train them only when enabled. ``first``
    (rung 0) scales the knee-first cut, as in every promotion.

    Each spec holds the trial's layout carried to the scale (`hyla.space.presets.at_scale`: the same pattern at
    the scale's width, heads, MLP, vocab and depth), inline, so the YAML is the model that trains. A scale the
    space cannot be carried to is skipped with a note (refused by `prepare` when ``enabled``). An existing spec is
    kept, unless it no longer loads (an older hyla wrote the proxy's layout under ``scale: 340m``).

    Returns:
        Paths of the written specs.
    """
    from hyla.search.rungs import select_promoted
    from hyla.space.layout import Layout
    from hyla.space.presets import at_scale

    cfg = prep.cfg
    fr = cfg.full_runs
    if not fr.enabled and not fr.scales:
        return []
    promote = cfg.rungs[-1].promote
    picked = select_promoted(last.get_trials(deepcopy=False), cfg.directions, cfg.objectives, promote.rule,
                             promote.k, promote.objective, noise=promote.noise, z=promote.noise_z,
                             context=first.get_trials(deepcopy=False) if first is not None else ())
    if not picked:
        return []
    try:
        from hyla.proxy_train.train.full_run import train_full
        from hyla.proxy_train.train.full_spec import run_spec_for
    except ImportError as e:
        if console is not None:
            console.print(f"[yellow]full-run specs skipped: hyla.proxy_train.train.full_run unavailable ({e})[/]")
        if fr.enabled:
            raise ConfigError(f"{cfg.where}: full_runs.enabled: the full-scale trainer cannot be imported: {e}") from None
        return []
    out: list[str] = []
    rung = len(cfg.rungs) - 1
    for t in picked:
        layout = Layout.from_dict(t.user_attrs["layout"])
        for scale in fr.scales:
            path = prep.run_path / "full_runs" / f"rung{rung}-trial{t.number:05d}-{scale}.yaml"
            try:
                full = at_scale(layout, scale, name=f"rung{rung}-trial{t.number:05d} ({layout.name or layout.key()}) "
                                                    f"at {scale}")
            except ConfigError as e:
                if fr.enabled:
                    raise ConfigError(f"{cfg.where}: full_runs.scales: {scale}: {e}") from None
                if console is not None:
                    console.print(f"[yellow]full-run spec of trial {t.number} at {scale} skipped: {e}[/]")
                continue
            spec = run_spec_for(full, scale, tokens=int(fr.tokens) if fr.tokens else None)
            if not path.exists() or _stale(path):  # never overwrite a spec a finished/running job may point at
                spec.dump(path)
            out.append(str(path))
            if fr.enabled:
                if console is not None:
                    console.print(f"full run: trial {t.number} at {scale} ({path})")
                train_full(spec, address=cfg.ray.address)
    return out


def _stale(path: Path) -> bool:
    """A spec that no longer loads, e.g. one an older hyla wrote with the proxy's layout under ``scale: 340m``
    (refused by ``RunSpec.resolve_layout``): no job can run it, so it is rewritten."""
    from hyla.proxy_train.train.full_spec import RunSpec

    try:
        RunSpec.load(path).resolve_layout()
    except ConfigError:
        return True
    return False
