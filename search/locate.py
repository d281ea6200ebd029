"""Where a study lives: the one resolver of every command that reads a study.

`hyla search status` and `hyla analysis pareto|report|export|calibrate` take the same STUDY argument, any of:

- the study YAML that ran the search (its ``name``, ``storage`` and ``run_dir``, read without validating the
  rest, so the YAML of an older hyla still finds its study; a relative ``run_dir`` is relative to the YAML's
  folder, the default is ``hyla_runs/<name>`` in the current directory: the search's own rules);
- a journal file (``study.journal``, or ``journal:PATH``);
- a run directory holding ``study.journal``;
- an Optuna RDB URL (``sqlite:///...``, ``postgresql://...``).

The storage is opened read-only (`hyla.search.storage.open_storage` with ``create=False``): a study that was never
run is a one-line `ConfigError`, and nothing is written. A storage may hold several studies; rung r of study NAME
is the Optuna study ``NAME/rung<r>``, so ``--study NAME`` picks one by its base name (with a did-you-mean).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hyla.config import ConfigError, did_you_mean, load_yaml

_RUNG_RE = re.compile(r"^(?P<base>.+)/rung(?P<rung>\d+)$")

#: What a STUDY argument may be (help texts).
STUDY_HELP = "study YAML, journal file, run directory or storage URL"


@dataclass(frozen=True)
class StudyLocation:
    """A resolved STUDY argument.

    Attributes:
        storage: the opened Optuna storage (read-only use).
        name: the study's base name (its rungs are ``name/rung<r>``).
        study_names: every Optuna study name in the storage.
        run_dir: the study's run directory when the source tells it (a YAML, journal or run directory), else None.
        source: the argument as given (for messages).
    """

    storage: Any
    name: str
    study_names: tuple[str, ...]
    run_dir: Path | None
    source: str

    def rung_of(self, study_name: str) -> int | None:
        """The rung of an Optuna study of this study (None for a study stored under the bare name)."""
        m = _RUNG_RE.match(study_name)
        return int(m["rung"]) if m and m["base"] == self.name else None

    def member_names(self) -> list[str]:
        """The Optuna studies that belong to this study: ``name`` itself and its ``name/rung<r>`` studies."""
        return [n for n in self.study_names if n == self.name or self.rung_of(n) is not None]


def locate_study(source: str | Path, study_name: str | None = None, where: str | None = None) -> StudyLocation:
    """Resolve a STUDY argument (see the module docstring) and pick the study in its storage.

    Args:
        source: study YAML, journal file, run directory or storage URL.
        study_name: which study when the storage holds several (default: the YAML's name, or the only one).
        where: names the argument in messages about its storage (default ``study SOURCE``).

    Raises:
        ConfigError: the source is none of these, names a study that was never run, the storage cannot be
            read, or the study is not in it.
    """
    import optuna

    storage, named, run_dir = _resolve(str(source), where or f"study {source}")
    try:
        names = tuple(optuna.get_all_study_names(storage=storage))
    except Exception as e:  # unreachable database, malformed journal ...
        raise ConfigError(f"study {source}: cannot read its storage: {str(e).splitlines()[0]}") from None
    name = _pick_name(names, study_name or named, str(source))
    return StudyLocation(storage, name, names, run_dir, str(source))


def _resolve(text: str, where: str) -> tuple[Any, str | None, Path | None]:
    """(opened storage, study name if the source names one, run directory if the source tells it)."""
    from hyla.search.storage import open_storage

    if text.startswith("journal:") or "://" in text:
        run_dir = Path(text.removeprefix("journal:")).parent if text.startswith("journal:") else None
        return open_storage(text, where=where, create=False), None, run_dir
    p = Path(text)
    if p.is_dir():
        if not (p / "study.journal").is_file():
            raise ConfigError(f"{p}: run directory has no study.journal; pass the storage URL or the study YAML")
        return open_storage(f"journal:{p / 'study.journal'}", where=str(p), create=False), None, p
    if not p.is_file():
        raise ConfigError(f"study {text!r}: no such file or directory; expected a study YAML, a journal file, a "
                          "run directory or a storage URL (sqlite:///..., postgresql://...)")
    if p.suffix in (".yaml", ".yml"):
        return _from_study_yaml(p)
    return open_storage(f"journal:{p}", where=where, create=False), None, p.parent


def _from_study_yaml(path: Path) -> tuple[Any, str, Path]:
    """Name, storage and run directory of a study YAML (the search's rules for ``run_dir``)."""
    from hyla.search.config import yaml_run_dir
    from hyla.search.storage import open_storage

    data = load_yaml(path)
    if not isinstance(data, dict) or not isinstance(data.get("name"), str) or not data["name"]:
        raise ConfigError(f"{path}: expected a study config mapping with a 'name' field")
    name = data["name"]
    run_dir = Path(yaml_run_dir(data.get("run_dir"), path) or Path("hyla_runs") / name)
    if data.get("storage"):
        return open_storage(str(data["storage"]), where=f"{path}: storage", create=False), name, run_dir
    journal = run_dir / "study.journal"
    if not journal.is_file():
        raise ConfigError(f"{path}: study {name!r} has no journal at {journal} (has the search run? "
                          f"`hyla search run {path}` starts it)")
    return open_storage(f"journal:{journal}", where=str(path), create=False), name, run_dir


def _pick_name(names: tuple[str, ...], wanted: str | None, source: str) -> str:
    bases = sorted({(m["base"] if (m := _RUNG_RE.match(n)) else n) for n in names})
    if wanted is not None:
        if wanted not in bases:
            raise ConfigError(f"study {wanted!r}: not in {source}{did_you_mean(wanted, bases)}; studies there: "
                              f"{', '.join(bases) or 'none'}")
        return wanted
    if len(bases) != 1:
        raise ConfigError(f"{source}: holds {len(bases)} studies ({', '.join(bases) or 'none'}); pass --study NAME")
    return bases[0]
