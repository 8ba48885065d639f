"""Stored experiment configs read and edited as plain dicts: today's spelling of an older config, the run
settings of one, a what-if copy with some options changed, and the differences between two.

The library's one place for this (sweeps build their cells with :func:`whatif_config`, audits read a run's data
options with :func:`known_fields`, the app's What-if and forms use the same functions), torch-free. A config
stored by an older version may spell an option where it no longer lives: :func:`current_config` moves it, so it
reads (and diffs) as today's.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .errors import PafoInputError
from .method_configs import RunSettings

__all__ = ["MOVED_OPTIONS", "config_diff", "current_config", "flatten", "known_fields", "run_settings",
           "whatif_config"]

#: Options that moved between sections, ``{old "section.field": new "section.field"}``: the verdict's ε was a
#: PAFO option before it became a run setting (issue 21).
MOVED_OPTIONS = {"pafo.epsilon": "run.epsilon"}
MSG_BAD_CHANGE = "what-if change {key!r} must name section.field, e.g. pafo.lam"


def known_fields(cls: type, values: dict | None) -> dict:
    """``values`` restricted to the fields ``cls`` has now (a run stored by an older version may have others)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in (values or {}).items() if k in names}


def current_config(values: dict) -> dict:
    """An experiment config dict in today's spelling (:data:`MOVED_OPTIONS`); a value already at the new place
    wins. The dict given is left as it is."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in values.items()}
    for old, new in MOVED_OPTIONS.items():
        (section, name), (to_section, to_name) = old.split("."), new.split(".")
        if isinstance(out.get(section), dict) and name in out[section]:
            value = out[section].pop(name)
            out.setdefault(to_section, {}).setdefault(to_name, value)
    return out


def run_settings(config: dict | None) -> RunSettings | None:
    """The run settings of a stored config (encoder, methods, ...), ``None`` for a config without any (an audit)."""
    run = (config or {}).get("run")
    return None if run is None else RunSettings(**known_fields(RunSettings, current_config(config)["run"]))


def flatten(config: dict, prefix: str = "") -> dict:
    """A nested config dict as ``{"section.field": value}`` (the keys of :mod:`pafo.effects`)."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_diff(parent: dict, child: dict) -> list[tuple[str, Any, Any]]:
    """The ``(section.field, parent value, child value)`` triples where two experiment configs differ (both read in
    today's spelling, so an option that only moved is no difference)."""
    a, b = flatten(current_config(parent)), flatten(current_config(child))
    return [(key, a.get(key), b.get(key)) for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)]


def whatif_config(parent: dict, changes: dict[str, Any], *, check_effect: bool = True) -> dict:
    """A copy of ``parent`` with ``{"section.field": value}`` changes applied, validated as an experiment.

    Setting ``groups.minority_threshold`` to ``None`` returns to the quantile rule. A change to an option that has
    no effect in the child config is refused (:class:`pafo.effects.NoEffectError`), unless ``check_effect`` is
    off (a sweep checks its whole grid instead: :func:`pafo.effects.check_grid`).
    """
    from .experiment import ExperimentConfig

    child = current_config(parent)
    for key, value in changes.items():
        if key == "seeds":  # the one top-level field: blank keeps data.seed alone
            child.pop("seeds", None)
            if value not in (None, "") and str(value).strip():
                child["seeds"] = value
            continue
        section, _, name = key.partition(".")
        if not name:
            raise PafoInputError(MSG_BAD_CHANGE.format(key=key))
        child.setdefault(section, {})[name] = value
    config = ExperimentConfig.from_dict(child)  # validated (PafoInputError)
    if check_effect:
        from .effects import check_effective, flat_values

        before = flat_values(current_config(parent))
        check_effective(config, [key for key, value in flat_values(config).items()
                                 if key in changes and before.get(key) != value])
    return config.to_dict()  # in its one spelling
