"""Command-line options derived from the recipe's declarations, shared by `generate`, `sweep-guidance` and `batch`
(simonw/llm's shared option decorators): every declared setting is one option, with the flags, help, choices and
default its declaration gives, so the commands' options cannot drift apart.

`settings_options(Recipe, Request, Run, exclude=...)` adds the options to a command's signature and hands the
command what was given as `given`: settings by name, options not given left out.
"""

from __future__ import annotations

import enum
import functools
import inspect
from collections.abc import Callable, Collection
from dataclasses import Field
from pathlib import Path
from typing import Annotated, Any

import typer

from sdcli.recipe import Setting, declared, recorded_path

_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def _choices(name: str, choices: tuple[str, ...]) -> type[enum.Enum]:
    return enum.Enum(name.title().replace("_", ""), {choice: choice for choice in choices}, type=str)


def _many(f: Field) -> bool:
    """A setting of several values (a tuple): its option may be repeated, each value one."""
    return str(f.type).startswith("tuple")


def _option_type(f: Field, spec: Setting) -> Any:
    """The type typer parses the option's value as."""
    if spec.choices is not None:
        return _choices(f.name, spec.choices)
    if _many(f):
        item = _TYPES[str(f.type).removeprefix("tuple[").split(",")[0]]  # tuple[float, ...]: float
        return list[Path] if spec.path else list[item]
    if spec.repeats is not None:
        return list[str]
    if spec.path:
        return Path
    return _TYPES[str(f.type).split(" |")[0]]


def _is_flag(f: Field, spec: Setting) -> bool:
    """An on/off switch that is off by default (--allow-pickle): given only when on."""
    return f.default is False and spec.flags == ()


def _parameter(f: Field, spec: Setting) -> inspect.Parameter:
    flag = _is_flag(f, spec)
    show_default = spec.show_default if spec.show_default is not None else (False if flag else str(f.default))
    option = typer.Option(
        *(spec.flags or [spec.flag(f.name)]),
        help=spec.help,
        metavar=spec.metavar,
        show_default=show_default,
        envvar=spec.env,
        show_envvar=False,  # show_default names it
    )
    kind = bool if flag else _option_type(f, spec) | None
    default = False if flag else None
    return inspect.Parameter(
        f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[kind, option]
    )


def _settings(f: Field, spec: Setting, value: Any) -> dict[str, Any]:
    """The settings an option's parsed value gives (none when the option was not given)."""
    if value is None or (value is False and _is_flag(f, spec)):
        return {}
    if isinstance(value, enum.Enum):
        return {f.name: value.value}
    if spec.repeats is not None:
        return {f.name: value[0], spec.repeats: tuple(value[1:])} if value else {}
    if _many(f):
        return {f.name: tuple(recorded_path(spec, v) if spec.path else v for v in value)} if value else {}
    if spec.path:
        return {f.name: recorded_path(spec, value)}
    return {f.name: value}


def settings_options(*kinds: type, exclude: Collection[str] = ()) -> Callable[[Callable], Callable]:
    """A decorator: the command gets one option per declared setting of `kinds` (but those in `exclude` and those
    declared without an option), after its own parameters, and receives the given ones as `given`."""
    declarations = [(f, spec) for kind in kinds for f, spec in declared(kind) if spec.flags is not None]
    declarations = [(f, spec) for f, spec in declarations if f.name not in exclude]

    def decorate(command: Callable) -> Callable:
        signature = inspect.signature(command, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name != "given"]
        parameters = [*own, *(_parameter(f, spec) for f, spec in declarations)]

        @functools.wraps(command)
        def with_settings(**values: Any) -> Any:
            given: dict[str, Any] = {}
            for f, spec in declarations:
                given |= _settings(f, spec, values.pop(f.name))
            return command(**values, given=given)

        with_settings.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        with_settings.__annotations__ = {p.name: p.annotation for p in parameters}
        return with_settings

    return decorate
