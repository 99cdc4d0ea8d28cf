"""Settings declared once, as fields of a frozen dataclass; flags and variables made from them."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Generic, NoReturn, TypeVar

from asset_service.options._kinds import BOOL, Kind

T = TypeVar("T")
S = TypeVar("S")

_METADATA_KEY = "asset_service.options.setting"
DEFAULT = "default"


@dataclass(frozen=True)
class Many(Kind[tuple[T, ...]]):
    """Several values of `item`: a flag given again, or a variable split at os.pathsep."""

    item: Kind[T] | None = None

    @classmethod
    def of(cls, item: Kind[T]) -> Many[T]:
        def parse(text: str) -> tuple[T, ...]:
            return tuple(item.parse(part) for part in text.split(os.pathsep) if part)

        def show(values: tuple[T, ...]) -> str:
            return os.pathsep.join(item.show(v) for v in values)

        forms = f"{item.forms}; several separated by '{os.pathsep}' in the variable"
        return cls(f"several {item.name}s", parse, forms, show, item.metavar, item)


@dataclass(frozen=True)
class Setting(Generic[T]):
    """One setting: its field's name, how its text is read, its default text and its help."""

    name: str
    kind: Kind[T]
    default: str
    help: str
    group: str
    flag: str
    env: str
    secret: bool = False
    default_doc: str = ""
    derive: Callable[[Mapping[str, Any]], T] | None = None

    @property
    def shown_default(self) -> str:
        return self.default_doc or self.default or "none"

    @property
    def metavar(self) -> str:
        return self.kind.metavar


def setting(
    kind: Kind[T],
    default: str,
    help: str,
    *,
    group: str,
    flag: str = "",
    env: str = "",
    secret: bool = False,
    default_doc: str = "",
    derive: Callable[[Mapping[str, Any]], T] | None = None,
) -> T:
    """A field of a settings dataclass, and everything the command line needs to fill it.

    `default` is text read like a given value; `flag` defaults to the field's name, and
    `env` (the variable without its prefix) to the flag's name in capitals. A `secret`
    value is masked wherever it is shown; `derive` computes an empty value from the other
    settings (`default_doc` says how, in the help). The field's own default is `default`
    read now, so that `Settings.x` can stand as a default elsewhere; loading reads it again
    (a relative path then resolves against the working directory of that moment).
    """
    spec = Setting("", kind, default, help, group, flag, env, secret, default_doc, derive)
    return field(default=kind.parse(default), metadata={_METADATA_KEY: spec})


@dataclass(frozen=True)
class Loaded(Generic[S]):
    """The settings, where each came from ("default", a variable or a flag), and the flags'
    namespace (for options that are no setting, like --print-config)."""

    settings: S
    sources: Mapping[str, str]
    args: argparse.Namespace


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line and exit 2 (argparse would print the whole usage first)."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class Table(Generic[S]):
    """The settings of dataclass `cls`, each a field made by `setting()`."""

    def __init__(self, cls: type[S], *, env_prefix: str, groups: Mapping[str, str]) -> None:
        self.cls = cls
        self.env_prefix = env_prefix
        self.groups = dict(groups)
        self.settings = tuple(self._complete(f.name, f.metadata) for f in fields(cls))  # type: ignore[arg-type]
        by_env = {s.env for s in self.settings}
        if len(by_env) != len(self.settings):
            raise TypeError(f"{cls.__name__}: two settings share a flag or variable")

    def _complete(self, name: str, metadata: Mapping[str, Any]) -> Setting[Any]:
        spec: Setting[Any] | None = metadata.get(_METADATA_KEY)
        if spec is None:
            raise TypeError(f"{self.cls.__name__}.{name} is not declared with setting()")
        if spec.group not in self.groups:
            raise TypeError(f"{self.cls.__name__}.{name}: unknown group {spec.group!r}")
        flag = spec.flag or "--" + name.replace("_", "-")
        env = self.env_prefix + (spec.env or flag.removeprefix("--").replace("-", "_").upper())
        return replace(spec, name=name, flag=flag, env=env)

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """One flag per setting (and --no-X for booleans), grouped, each naming its variable.
        The flags keep their text (None when absent): `load` reads flag and variable alike."""
        groups = {
            name: parser.add_argument_group(name, description)
            for name, description in self.groups.items()
        }
        for s in self.settings:
            extra = f"[{s.env}; default: {s.shown_default}]"
            text = f"{s.help} {extra}".replace("%", "%%")  # argparse %-formats help
            options: dict[str, Any] = {"dest": s.name, "default": None, "help": text}
            options["metavar"] = s.metavar
            if s.kind is BOOL:
                # --x alone is true; --x=no is read like the variable, so a bad word gets
                # the same one-line refusal.
                options.update(nargs="?", const="true", metavar="BOOL")
            elif isinstance(s.kind, Many):
                options["action"] = "append"
            groups[s.group].add_argument(s.flag, **options)
            if s.kind is BOOL:
                groups[s.group].add_argument(
                    _no(s.flag),
                    dest=s.name,
                    action="store_false",
                    default=None,
                    help=f"{s.flag}=false",
                )

    def load(
        self,
        parser: argparse.ArgumentParser,
        argv: Sequence[str] | None,
        env: Mapping[str, str],
    ) -> Loaded[S]:
        """Parse `argv`; each setting from its flag, else its variable, else its default.
        A bad value from either ends the process: one line naming both, exit status 2."""
        args = parser.parse_args(argv)
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        for s in self.settings:
            given = getattr(args, s.name)
            try:
                if given is not None:
                    sources[s.name] = f"flag {s.flag if given is not False else _no(s.flag)}"
                    values[s.name] = _from_flag(s, given)
                elif s.env in env:
                    sources[s.name] = f"environment {s.env}"
                    values[s.name] = s.kind.parse(env[s.env])
                else:
                    sources[s.name] = DEFAULT
                    values[s.name] = s.kind.parse(s.default)
            except argparse.ArgumentTypeError as exc:
                _refuse(parser, s, given is not None, str(exc))
        for s in self.settings:
            if s.derive is not None and not values[s.name]:
                values[s.name] = s.derive(values)
        return Loaded(self.cls(**values), sources, args)


def _no(flag: str) -> str:
    return "--no-" + flag.removeprefix("--")


def _from_flag(s: Setting[Any], given: Any) -> Any:
    if isinstance(s.kind, Many):
        assert s.kind.item is not None
        return tuple(s.kind.item.parse(text) for text in given)
    return given if given is False else s.kind.parse(given)


def _refuse(parser: argparse.ArgumentParser, s: Setting[Any], flag: bool, problem: str) -> NoReturn:
    named = f"{s.flag} (or {s.env})" if flag else f"{s.env} (the variable of {s.flag})"
    forms = s.kind.forms
    # A parser that already said what it accepts (the expiry rules' syntax) is not repeated.
    accepted = "" if forms.split(";")[0] in problem else f"; accepted: {forms}"
    parser.exit(2, f"{parser.prog}: error: {named}: {problem}{accepted}\n")
