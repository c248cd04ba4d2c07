"""What every `embed-dogs` command shares: the typer app and its global options, the consoles,
the option types, one-line errors and the progress bar. The commands live in `ui.cli_build`,
`ui.cli_query` and `ui.cli_bundle`; `ui.cli` assembles them."""

from __future__ import annotations

import atexit
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Column

from embed.engines import ENGINE_CHOICES
from embed.environment import VERBOSE_ENV
from embed.errors import EmbedDogsError
from embed.runtimes import RUNTIME_CHOICES
from index.choice import INDEX_KINDS, parse_budget
from ui.build_flow import HEADS
from ui.cli_help import CommandGroup

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before anything imports TensorFlow

app = typer.Typer(
    cls=CommandGroup,  # -q/-v anywhere, plain metavars, defaults in one piece
    help="Embed dog photos with a pretrained backbone, search look-alikes with FAISS and "
    "classify breeds.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click help: wraps cleanly at 80 columns, nothing truncated
    context_settings={"max_content_width": 100},
)
console = Console()
err = Console(stderr=True)
state: dict[str, Any] = {"quiet": False, "command": None}


class Terminated(KeyboardInterrupt):
    """SIGTERM (kill, systemd, a container stop): cleaned up like Ctrl-C, exit code 143."""


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated


def freeze_at_exit() -> None:
    """Once per process: at exit, after the command's work, its threads and the other exit
    handlers (registered later, so run earlier), move every object to the garbage
    collector's permanent generation, so that the interpreter's shutdown does not walk them.

    Why: a build imports scikit-learn and skops, which imports every scikit-learn module
    (`all_estimators`); the shutdown's collections over those objects took 0.46 s of a warm
    40-photo build's wall time, 0.07 s frozen (issue 21, measured on the 2-core EPYC).
    Objects are still released by reference counting; only cycles left at exit go
    uncollected, and nothing a command writes waits on them (files are closed, bundles
    committed, stdout and stderr flushed by the interpreter itself)."""
    if not state.get("freeze_registered"):
        atexit.register(gc.freeze)
        state["freeze_registered"] = True


def _version(value: bool) -> None:
    if value:
        from importlib import metadata

        console.print(f"embed-dogs {metadata.version('embed-dogs')}")
        raise typer.Exit()


@app.callback()
def main(
    ctx: typer.Context,
    verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="Also show TensorFlow's and LiteRT's own log lines.")] = False,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="Print only errors (and what --out - or --json asks for).")
    ] = False,
    version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """Embed dog photos with a pretrained backbone, search look-alikes with FAISS and classify
    breeds."""
    signal.signal(signal.SIGTERM, _terminate)
    freeze_at_exit()
    state["command"] = ctx.invoked_subcommand
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    console.quiet = quiet
    state["quiet"] = quiet
    handler = RichHandler(console=err, show_time=False, show_path=False, markup=False)
    if not verbose:  # tensorflow-datasets' and TensorFlow's Python loggers chatter on stderr
        for chatty in ("absl", "tensorflow"):
            logging.getLogger(chatty).setLevel(logging.ERROR)
    for package in ("embed", "index", "classify", "ui"):  # long fixed steps say what they do
        logger = logging.getLogger(package)
        logger.handlers[:] = [handler]
        logger.setLevel(logging.WARNING if quiet else logging.INFO)
        logger.propagate = False


@contextmanager
def native_stderr_hidden() -> Iterator[None]:
    """TensorFlow and XNNPACK write log lines straight to file descriptor 2. For the command,
    point fd 2 at /dev/null and keep Python's own stderr (errors, warnings, progress) on a
    copy of the real one; `--verbose` keeps everything."""
    try:
        real_stderr = sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):  # captured (tests): nothing to hide
        real_stderr = False
    if os.environ.get(VERBOSE_ENV) or not real_stderr:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    python_stderr, err_file = sys.stderr, err.file
    sys.stderr = err.file = os.fdopen(os.dup(saved), "w", buffering=1, errors="replace")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        sys.stderr.close()
        sys.stderr, err.file = python_stderr, err_file


def choices(name: str, values: tuple[str, ...]) -> Any:
    """A str Enum of the library's own choices, so typer lists and checks them in --help."""
    return Enum(name, {v: v for v in values}, type=str)


RuntimeChoice = choices("RuntimeChoice", RUNTIME_CHOICES)
IndexChoice = choices("IndexChoice", INDEX_KINDS)
HeadChoice = choices("HeadChoice", HEADS)
SpaceChoice = choices("SpaceChoice", ("raw", "learned"))
EngineChoice = choices("EngineChoice", ENGINE_CHOICES)


def plain(value: Any) -> Any:
    """An Enum choice as its plain string (None stays None)."""
    return value.value if isinstance(value, Enum) else value


def memory_size(value: str) -> str:
    try:
        parse_budget(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    return value


BundleOpt = Annotated[
    Path, typer.Option("--bundle", "-b", help="Bundle folder written by build-index.")
]
HeadOpt = Annotated[
    HeadChoice | None, typer.Option(help="Breed head (default: the best one).")
]
RuntimeOpt = Annotated[
    RuntimeChoice | None,
    typer.Option(help="Inference runtime (default: what the bundle was built with)."),
]
SpaceOpt = Annotated[SpaceChoice | None, typer.Option(
    help="Look-alike space: learned (fitted on the bundle's breeds) or raw (the embedding);"
    " default: learned when the bundle has a current one, raw otherwise.")]
EngineOpt = Annotated[EngineChoice, typer.Option(
    help="Where the embedding runs: this process, or a Ray cluster (pip install"
    " 'embed-dogs[ray]').")]
RayAddressOpt = Annotated[str | None, typer.Option(
    help="ray: the cluster to join ('auto': the one `ray start` runs on this machine;"
    " default: start a local one on this machine's cores).")]
WorkersOpt = Annotated[int | None, typer.Option(
    min=1, help="ray: embedding actors, each loads the model once (default: one per core"
    " of the cluster).")]


@contextmanager
def clear_errors() -> Iterator[None]:
    """Expected failures become one line on stderr and exit code 2; never a traceback."""
    try:
        with native_stderr_hidden():
            yield
    except EmbedDogsError as exc:
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt as exc:
        err.print(f"[yellow]interrupted; nothing half-written was left behind. {_after_stop()}[/]")
        raise typer.Exit(143 if isinstance(exc, Terminated) else 130) from None


def _after_stop() -> str:
    """What an interrupted command left, in words: it depends on the command."""
    command = state.get("command")
    if command == "build-index":
        return "Run it again with the same options: it continues where it stopped."
    if command in ("add", "remove", "train", "audit", "evaluate"):
        return "The bundle is as it was before the command."
    if command == "classify":
        return "No results file was written; run it again to classify the photos."
    return ""


Start = Callable[[int], Callable[[int], None]]
EPOCH_LOGS = {"loss": "loss", "accuracy": "acc", "val_accuracy": "val acc"}
EpochCallback = Callable[[str, int, int, dict[str, float]], None]


@contextmanager
def progress_bar(description: str, hidden: bool = False) -> Iterator[Start]:
    """Yields `start(total) -> advance(n)`, a rich bar with images/s (on stderr)."""
    with progress_and_epochs(description, hidden) as (start, _):
        yield start


@contextmanager
def progress_and_epochs(description: str, hidden: bool = False
                        ) -> Iterator[tuple[Start, EpochCallback]]:
    """Image bars (`start`) and a bar per training phase (`on_epoch`) in ONE live display:
    `--fine-tune` embeds, trains, then embeds again, and rich before 14 refuses a second live
    display inside the first (LiveError), which is why it used to print a line per epoch."""
    times = Column(min_width=7, no_wrap=True)  # a long epoch note wraps; the clocks stay whole
    columns = [
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[note]}", table_column=Column(overflow="fold")),
        TimeElapsedColumn(table_column=times), TimeRemainingColumn(table_column=times),
    ]
    with Progress(*columns, console=err, transient=False, disable=state["quiet"] or hidden) as bar:
        def start(total: int) -> Callable[[int], None]:
            task = bar.add_task(description, total=total, note="- img/s")

            def advance(n: int) -> None:
                bar.advance(task, n)
                t = bar.tasks[task]
                if t.elapsed:
                    bar.update(task, note=f"{t.completed / t.elapsed:.1f} img/s")

            return advance

        on_epoch, finish = epoch_tasks(bar)
        yield start, on_epoch
        finish()


@contextmanager
def epoch_bar() -> Iterator[EpochCallback]:
    """Yields an `on_epoch(phase, epoch, total, logs)` callback (what Keras' callback in
    `classify.finetune` calls) that drives one bar per training phase, with the latest loss and
    accuracy beside it, instead of a line per epoch. Early stopping fills the bar at once."""
    columns = [TextColumn("[bold]{task.description}"), BarColumn(bar_width=20),
               MofNCompleteColumn(), TextColumn("{task.fields[note]}"), TimeElapsedColumn()]
    with Progress(*columns, console=err, transient=False, disable=state["quiet"]) as bar:
        on_epoch, finish = epoch_tasks(bar)
        yield on_epoch
        finish()


def epoch_tasks(bar: Progress) -> tuple[EpochCallback, Callable[[], None]]:
    """`on_epoch` adding a task per phase to `bar`, and `finish`, which fills the bars that
    early stopping ended before their last epoch."""
    tasks: dict[str, Any] = {}

    def on_epoch(phase: str, epoch: int, total: int, logs: dict[str, float]) -> None:
        for other, task in tasks.items():  # a new phase: the previous one has ended
            if other != phase:
                bar.update(task, total=bar.tasks[task].completed)
        if phase not in tasks:
            tasks[phase] = bar.add_task(phase.replace("_", " "), total=total, note="epochs")
        shown = "  ".join(f"{name} {logs[k]:.3g}" if k.endswith("loss") else
                          f"{name} {logs[k]:.0%}" for k, name in EPOCH_LOGS.items()
                          if k in logs)
        bar.update(tasks[phase], completed=epoch, note=f"epochs  {shown}")

    def finish() -> None:
        for task in tasks.values():
            bar.update(task, total=bar.tasks[task].completed)

    return on_epoch, finish
