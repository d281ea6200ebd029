"""Opening the Optuna storage of a search, and the per-rung studies inside it.

Default storage: ``JournalStorage(JournalFileBackend(run_dir/study.journal))`` - a file, safe for one driver
and no server. Any Optuna RDB URL (``sqlite:///...``, ``postgresql://...``) also works; for RDBs a connection is
made up front so an unreachable server is a one-line ConfigError instead of a stack trace mid-search.

A study name reused with a different search space is refused (study user attr ``space_key``), as is one reused
with different objectives: mixing would silently compare numbers that do not mean the same thing.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend

from hyla.config import ConfigError

optuna.logging.set_verbosity(optuna.logging.WARNING)
logging.getLogger("sqlalchemy").setLevel(logging.WARNING)


def open_storage(url: str, where: str = "storage", *, create: bool = True) -> BaseStorage:
    """Open a storage from ``journal:PATH``, a ``*.journal`` path, or an Optuna RDB URL.

    Args:
        url: the storage.
        where: names the input in messages.
        create: make what is missing (the journal file and its folder, an SQLite file, Optuna's tables).
            False (read-only commands: status, analysis) refuses a storage that does not exist yet instead, and
            writes nothing.

    Raises:
        ConfigError: the URL is malformed, its driver is missing, the server does not answer, or (``create``
            False) the journal file, SQLite file or Optuna tables do not exist.
    """
    if url.startswith("journal:") or url.endswith(".journal") or url.endswith(".log"):
        path = Path(url.removeprefix("journal:"))
        if not create and not path.is_file():
            raise ConfigError(f"{where}: journal file {str(path)!r} not found (has the search run?)")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path)))
        except OSError as e:
            raise ConfigError(f"{where}: cannot open journal file {str(path)!r}: {e.strerror or e}") from None
    if "://" not in url:
        raise ConfigError(f"{where}: {url!r} is neither a journal file nor an RDB URL; expected e.g. "
                          "sqlite:///study.db, postgresql://user@host:5432/db or journal:path/study.journal")
    given, url = url, _pg_driver(url)
    kwargs: dict[str, Any] = {}
    if url.startswith("postgresql") or url.startswith("mysql"):
        # Fail fast on a dead host instead of waiting for the OS TCP timeout.
        kwargs["connect_args"] = {"connect_timeout": 5}
    if url.startswith("sqlite:///"):
        db = Path(url.removeprefix("sqlite:///"))
        if str(db) not in ("", ":memory:") and not db.parent.exists():
            raise ConfigError(f"{where}: sqlite directory {str(db.parent)!r} does not exist")
        if not create and not db.is_file():
            raise ConfigError(f"{where}: SQLite file {str(db)!r} not found (has the search run?)")
    try:
        if not create and not _has_optuna_tables(url, kwargs):
            raise ConfigError(f"{where}: {_redact(given)} holds no Optuna study (no Optuna tables)")
        return RDBStorage(url, engine_kwargs=kwargs, skip_table_creation=not create)
    except ConfigError:
        raise
    except ImportError as e:  # Optuna re-raises the driver's ModuleNotFoundError as a plain ImportError
        missing = e.name or getattr(e.__cause__, "name", None) or "its database driver"
        if url.split("://", 1)[0] in ("postgresql", "postgresql+psycopg2"):
            raise ConfigError(f"{where}: {_redact(given)} needs psycopg2; install hyla's postgres extra: "
                              'pip install -e ".[postgres]"') from None
        raise ConfigError(f"{where}: {_redact(given)} needs the Python package {missing!r}; install it") from None
    except Exception as e:  # sqlalchemy OperationalError, ArgumentError ...
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{where}: cannot use {_redact(url)}: {reason}") from None


def _has_optuna_tables(url: str, engine_kwargs: dict[str, Any]) -> bool:
    """True when the database at ``url`` has Optuna's tables (looked up without creating anything)."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, **engine_kwargs)
    try:
        inspector = sqlalchemy.inspect(engine)
        return inspector.has_table("studies") and inspector.has_table("version_info")
    finally:
        engine.dispose()


def _pg_driver(url: str) -> str:
    """SQLAlchemy 2.1 maps plain ``postgresql://`` to psycopg 3; use psycopg2 when only that is installed."""
    if not url.startswith("postgresql://"):
        return url
    import importlib.util

    if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


def _redact(url: str) -> str:
    """Hide a password in an RDB URL before it goes into a message."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        return f"{scheme}://{cred.split(':', 1)[0]}:***@{host}" if ":" in cred else url
    return url


def study_exists(storage: BaseStorage, name: str) -> bool:
    """True when ``storage`` holds a study called ``name``."""
    return any(s.study_name == name for s in storage.get_all_studies())


def check_compatible(name: str, have: dict[str, Any], attrs: dict[str, Any], where: str = "study") -> None:
    """Refuse to reuse study ``name`` (user attrs ``have``) for another ``space_key`` or other ``objectives``.

    Raises:
        ConfigError: the name is taken by a study of another space or other objectives.
    """
    if have.get("space_key") != attrs["space_key"]:
        raise ConfigError(f"{where}: name: study {name!r} already exists with another search space "
                          f"(space_key {have.get('space_key')} != {attrs['space_key']}); pick a new name or "
                          "storage")
    if have.get("objectives") != attrs["objectives"]:
        got = [o["name"] for o in have.get("objectives") or []]
        raise ConfigError(f"{where}: objectives: study {name!r} already exists with objectives {got}; "
                          "pick a new name to change objectives")


def existing_study_attrs(storage: BaseStorage, name: str) -> dict[str, Any] | None:
    """User attrs of study ``name`` in ``storage``, or None when there is no such study (nothing is written)."""
    for s in storage.get_all_studies():
        if s.study_name == name:
            return dict(s.user_attrs)
    return None


def open_study(storage: BaseStorage, name: str, directions: list[str], attrs: dict[str, Any],
               sampler: optuna.samplers.BaseSampler | None = None, where: str = "study") -> optuna.Study:
    """Load study ``name`` or create it with ``attrs`` as user attrs and the objective names as metric names.

    An existing study must have the same ``space_key`` and ``objectives`` as ``attrs``.

    Raises:
        ConfigError: the name is taken by a study of another space or other objectives.
    """
    if study_exists(storage, name):
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
        have = study.user_attrs
        check_compatible(name, have, attrs, where)
        if have.get("config") != attrs.get("config"):
            study.set_user_attr("config", attrs["config"])  # n_trials etc. may change on a resume
        _name_metrics(study, attrs)  # studies made by an older hyla get names on their next run
        return study
    study = optuna.create_study(study_name=name, storage=storage, directions=directions, sampler=sampler)
    for k, v in attrs.items():
        study.set_user_attr(k, v)
    _name_metrics(study, attrs)
    return study


def _name_metrics(study: optuna.Study, attrs: dict[str, Any]) -> None:
    """Name the study's values after its objectives (optuna-dashboard and plots then say ``recall``, not
    ``Objective 1``); skipped when already set or when the names do not fit the directions."""
    names = [o["name"] for o in attrs.get("objectives") or []]
    if not names or len(names) != len(study.directions) or study.metric_names == names:
        return
    with warnings.catch_warnings():  # experimental in Optuna (since 3.2), stable in use
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(names)


def load_rung_studies(storage: BaseStorage, name: str) -> dict[int, optuna.Study]:
    """All existing rung studies of search ``name``, by rung number."""
    out: dict[int, optuna.Study] = {}
    prefix = f"{name}/rung"
    for s in storage.get_all_studies():
        if s.study_name.startswith(prefix) and s.study_name[len(prefix):].isdigit():
            out[int(s.study_name[len(prefix):])] = optuna.load_study(study_name=s.study_name, storage=storage)
    return dict(sorted(out.items()))
