"""The command group's manners: global flags (`-q`, `-v`) accepted before or after the command
name, and plain help (metavars a person reads, `[default: …]` never split across lines)."""

from __future__ import annotations

from typing import Any

from typer import _click as click  # typer vendors click: its classes, not click's
from typer.core import TyperArgument, TyperGroup, TyperOption

GLOBAL_FLAGS = ("-q", "--quiet", "-v", "--verbose")
NO_BREAK = {" ": "\u00a0", "-": "\u2011"}  # textwrap breaks at neither of these


def hoist_global_flags(args: list[str]) -> list[str]:
    """`embed-dogs build-index -q …` as `embed-dogs -q build-index …`: the global flags move in
    front of the command name; nothing after `--` moves (the app's own arguments)."""
    end = args.index("--") if "--" in args else len(args)
    flags = [a for a in args[:end] if a in GLOBAL_FLAGS]
    rest = [a for a in args[:end] if a not in GLOBAL_FLAGS]
    return flags + rest + args[end:]


def _metavar(param: TyperOption) -> str:
    """A word for what an option takes: its choices, N, NUMBER, PATH or its own name."""
    kind = param.type_descriptor
    if kind.is_choice:
        return "|".join(str(getattr(c, "value", c)) for c in kind.choices or ())
    if kind.is_path:
        return "PATH"
    if kind.annotation is int:
        return "N"
    if kind.annotation is float:
        return "NUMBER"
    return (param.name or "value").upper()


def _argument_name(param: TyperArgument) -> str:
    return (param.name or "arg").upper() + ("..." if param.nargs != 1 else "")


def tidy_command(command: click.Command) -> click.Command:
    """Plain metavars for every option and argument of a command (typer shows `<list[str]>`,
    `<int range>` and `{inputs}`), and help written by `PlainContext`."""
    for param in command.params:
        if isinstance(param, TyperOption) and not param.is_flag and param.metavar is None:
            param.metavar = _metavar(param)
        elif isinstance(param, TyperArgument):
            name = _argument_name(param)
            param.metavar = name
            # typer's argument help adds a type after the name and braces in the usage line
            param.display_type_rich = lambda ctx: None  # type: ignore[method-assign]
            param._usage_display_name = (  # type: ignore[attr-defined]
                lambda name=name, required=param.required: name if required else f"[{name}]")
    command.context_class = PlainContext
    return command


def _unbreakable(text: str) -> str:
    """The bracketed tail of a help text (`[default: dogs-bundle; x>=1]`) in one piece."""
    start = text.rfind("[")
    if start < 0 or not text.endswith("]"):
        return text
    tail = text[start:]
    for plain_char, glued in NO_BREAK.items():
        tail = tail.replace(plain_char, glued)
    return text[:start] + tail


class PlainFormatter(click.HelpFormatter):
    def write_dl(self, rows: Any, col_max: int = 30, col_spacing: int = 2) -> None:
        written = len(self.buffer)
        super().write_dl([(a, _unbreakable(b)) for a, b in rows], col_max, col_spacing)
        for i in range(written, len(self.buffer)):
            for plain_char, glued in NO_BREAK.items():
                self.buffer[i] = self.buffer[i].replace(glued, plain_char)


class PlainContext(click.Context):
    formatter_class = PlainFormatter


class CommandGroup(TyperGroup):
    """`embed-dogs`'s group: global flags anywhere, tidy help for every command."""

    context_class = PlainContext

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, hoist_global_flags(list(args)))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        return tidy_command(command) if command is not None else None

