"""Command-line flags derived from config dataclasses, both ways: dataclass -> argparse flags -> dataclass,
and dataclass -> argv (the torchrun launcher re-creates a run in child processes from it).

Every field becomes ``--field-name`` (also accepted as ``--field_name``); a bool field is a switch
with a ``--no-`` form; a field's ``metadata["help"]`` is its help text. One mapping, so a flag can
never drift from the field it sets.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser, cls, skip=(), defaults=None, helps=None, shown=None) -> None:
    """One flag per field of dataclass ``cls`` (in an argument group named after it). ``defaults`` (an
    instance of ``cls``, or a mapping of field names to values) overrides the field defaults shown and used;
    ``helps`` maps field names to help texts for fields without ``metadata["help"]``; ``shown`` maps field
    names to what ``--help`` says their default is, in place of the value (for defaults decided after parsing)."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(cls.__name__)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        names = [flag_name(f.name)] + ([f"--{f.name}"] if "_" in f.name else [])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if isinstance(defaults, dict):
            default = defaults.get(f.name, default)
        elif defaults is not None:
            default = getattr(defaults, f.name)
        help_text = f.metadata.get("help") or (helps or {}).get(f.name, "")
        help_text = f"{help_text} (default: {(shown or {}).get(f.name, default)})".strip()
        kind = hints[f.name]
        if kind is bool:
            group.add_argument(*names, dest=f.name, action=argparse.BooleanOptionalAction, default=default,
                               help=help_text)
        else:
            group.add_argument(*names, dest=f.name, type=kind, default=default, metavar=f.name.upper(),
                               help=help_text)


def from_namespace(cls, namespace: argparse.Namespace, **overrides):
    """An instance of ``cls`` from the parsed flags that ``add_arguments`` added (plus ``overrides``)."""
    values = vars(namespace)
    kwargs = {f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values}
    kwargs.update(overrides)
    return cls(**kwargs)


def to_argv(instance, skip=()) -> list[str]:
    """The flags that make ``from_namespace`` rebuild ``instance``: every field, bools as switches."""
    argv = []
    for f in dataclasses.fields(instance):
        if f.name in skip:
            continue
        value, flag = getattr(instance, f.name), flag_name(f.name)
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        else:
            argv += [flag, str(value)]
    return argv
