"""`embed-dogs`: thin commands over the library; they parse options, own the progress bar and
turn the library's expected failures into one clear line and a non-zero exit."""

from __future__ import annotations

import json
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
from rich.table import Table

from embed.backbones import DEFAULT_BACKBONE, WEIGHTS_HELP
from embed.engines import DEFAULT_ENGINE, ENGINE_CHOICES
from embed.environment import VERBOSE_ENV
from embed.errors import EmbedDogsError
from embed.pipeline import DEFAULT_BATCH_SIZE
from embed.runtimes import DEFAULT_RUNTIME, RUNTIME_CHOICES
from embed.sources import DEFAULT_SOURCE, DEFAULT_TEST_FRACTION
from index.choice import DEFAULT_INDEX_KIND, DEFAULT_MEMORY_BUDGET, INDEX_KINDS, parse_budget
from ui.facts import manifest_facts
from ui.workflows import DEFAULT_OUT, HEADS, BuildConfig

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before anything imports TensorFlow

app = typer.Typer(
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
state = {"quiet": False}


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM (kill, systemd, a container stop) behaves like Ctrl-C


def _version(value: bool) -> None:
    if value:
        from importlib import metadata

        console.print(f"embed-dogs {metadata.version('embed-dogs')}")
        raise typer.Exit()


@app.callback()
def main(
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
    except KeyboardInterrupt:
        err.print("[yellow]interrupted; nothing half-written was left behind. A build-index"
                  " run again with the same options continues where it stopped.[/]")
        raise typer.Exit(130) from None


@contextmanager
def progress_bar(description: str, hidden: bool = False
                 ) -> Iterator[Callable[[int], Callable[[int], None]]]:
    """Yields `start(total) -> advance(n)`, a rich bar with images/s (on stderr)."""
    columns = [
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} img/s"), TimeElapsedColumn(), TimeRemainingColumn(),
    ]
    with Progress(*columns, console=err, transient=False, disable=state["quiet"] or hidden) as bar:
        def start(total: int) -> Callable[[int], None]:
            task = bar.add_task(description, total=total, rate="-")

            def advance(n: int) -> None:
                bar.advance(task, n)
                t = bar.tasks[task]
                if t.elapsed:
                    bar.update(task, rate=f"{t.completed / t.elapsed:.1f}")

            return advance

        yield start


@app.command("build-index")
def build_index(
    source: Annotated[str, typer.Option(
        help="tfds:NAME (tensorflow-datasets) or a folder: ROOT/<breed>/<images>.")
    ] = DEFAULT_SOURCE,
    out: Annotated[Path, typer.Option("--out", "-o", help="Bundle folder to write.")] = Path(
        DEFAULT_OUT
    ),
    backbone: Annotated[str, typer.Option(help="Backbone name; see `embed-dogs backbones`.")] = (
        DEFAULT_BACKBONE
    ),
    weights: Annotated[str, typer.Option(help=WEIGHTS_HELP + ".")] = "imagenet",
    image_size: Annotated[int | None, typer.Option(help="Input size in pixels.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per inference batch.")] = (
        DEFAULT_BATCH_SIZE
    ),
    index: Annotated[IndexChoice, typer.Option(
        help="FAISS index kind; auto picks by size and memory budget.")
    ] = DEFAULT_INDEX_KIND,
    memory_budget: Annotated[str, typer.Option(
        help="Index memory budget for auto, e.g. 2G.", callback=memory_size)
    ] = DEFAULT_MEMORY_BUDGET,
    runtime: Annotated[RuntimeChoice, typer.Option(
        help="Inference runtime; auto: LiteRT float32 on CPU, Keras on a GPU; litert-int8:"
        " int8, checked on this source's images (float32 when it fails).")
    ] = DEFAULT_RUNTIME,
    test_fraction: Annotated[float, typer.Option(
        min=0.0, max=0.9, help="Hold-out share for folders without their own split.")
    ] = DEFAULT_TEST_FRACTION,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing bundle.")] = False,
    backbone_from: Annotated[Path | None, typer.Option(
        help="Embed with the fine-tuned backbone of this bundle's finetune head (replaces"
        " --backbone/--weights/--image-size).")
    ] = None,
    engine: EngineOpt = DEFAULT_ENGINE,
    ray_address: RayAddressOpt = None,
    workers: WorkersOpt = None,
) -> None:
    """Embed every image of a source into a bundle, build its FAISS index and breed head."""
    config = BuildConfig(
        source=source, out=out, backbone=backbone, weights=weights, image_size=image_size,
        batch_size=batch_size, index_kind=plain(index), memory_budget=memory_budget,
        runtime=plain(runtime),
        test_fraction=test_fraction, overwrite=overwrite, backbone_from=backbone_from,
        engine=plain(engine), ray_address=ray_address, workers=workers,
    )
    with clear_errors(), progress_bar("embedding") as start:
        from ui.workflows import build_bundle

        result = build_bundle(config, on_source=lambda src: start(len(src.items)))
    stats = result.stats
    table = Table(title=f"bundle {result.bundle}", show_header=False)
    table.add_row("images embedded", str(stats.embedded) + (
        f" ({stats.reused} items reused from the interrupted build)" if stats.reused else ""))
    table.add_row("skipped", f"{stats.skipped}" + (
        f" (see {result.bundle / 'skipped.csv'})" if stats.skipped else ""))
    table.add_row("throughput", f"{stats.images_per_second:.1f} images/s (steady state)"
                  if stats.processed else "nothing left to embed (every item reused)")
    source = result.manifest.get("source") or {}
    if source.get("duplicates"):
        table.add_row("duplicates", f"{source['duplicates']} files repeat another file's"
                      " content; each group stays in one split")
    shown = ("backbone", "fine-tuned from", "runtime", "one-time costs", "engine", "index",
             "recall@10 vs exact search", "open-set gate")
    for name, value in manifest_facts(result.manifest):
        if name in shown or name.startswith("head "):
            table.add_row(name, value)
    if not result.manifest.get("heads"):
        table.add_row("breed head", "none (unlabelled source or no test images)")
    console.print(table)


@app.command()
def add(
    bundle: BundleOpt,
    source: Annotated[str, typer.Option(help="A folder of photos: ROOT/<breed>/<images>.")],
    batch_size: Annotated[int, typer.Option(min=1, help="Images per inference batch.")] = (
        DEFAULT_BATCH_SIZE
    ),
    runtime: RuntimeOpt = None,
    engine: EngineOpt = DEFAULT_ENGINE,
    ray_address: RayAddressOpt = None,
    workers: WorkersOpt = None,
) -> None:
    """Add the photos of a folder that the bundle does not hold yet (by content), then update
    its index, breed head and report."""
    with clear_errors(), progress_bar("adding") as start:
        from embed.engines import make_engine
        from ui.workflows import add_to_bundle

        runner = make_engine(plain(engine), ray_address, workers)
        stats = add_to_bundle(bundle, source, batch_size, plain(runtime),
                              on_source=lambda src: start(len(src.items)), engine=runner)
    console.print(f"added {stats.embedded} images to {bundle}"
                  + (f", {stats.skipped} could not be used (see skipped.csv)"
                     if stats.skipped else "")
                  + f"; {stats.reused} were already there")


@app.command()
def remove(
    bundle: BundleOpt,
    patterns: Annotated[list[str] | None, typer.Argument(
        help="Image paths or globs (e.g. 'beagle/*'), absolute or relative to the source.")
    ] = None,
    from_file: Annotated[Path | None, typer.Option(
        "--from-file", help="A text file with one path or glob per line.")] = None,
) -> None:
    """Remove images from a bundle, then update its index, breed head and report."""
    with clear_errors():
        from ui.workflows import remove_from_bundle

        wanted = list(patterns or [])
        if from_file is not None:
            if not from_file.is_file():
                raise EmbedDogsError(f"list file {from_file} does not exist")
            wanted += [line.strip() for line in from_file.read_text().splitlines()
                       if line.strip()]
        if not wanted:
            raise EmbedDogsError("name the images to remove: paths, globs or --from-file")
        removed = remove_from_bundle(bundle, wanted)
    console.print(f"removed {removed} images from {bundle}")


@app.command()
def train(
    bundle: BundleOpt,
    head: Annotated[HeadChoice, typer.Option(help="finetune (Keras) or logreg.")] = "finetune",
    epochs: Annotated[int, typer.Option(min=1, help="finetune: epochs of the head phase.")] = 30,
    learning_rate: Annotated[float, typer.Option(
        help="finetune: Adam learning rate of the head phase.")] = 1e-2,
    unfreeze: Annotated[int, typer.Option(
        min=0, help="finetune: top weighted backbone layers to train after the head (0: none;"
        " BatchNorm stays frozen).")] = 0,
    fine_tune_epochs: Annotated[int, typer.Option(
        min=0, help="finetune: epochs with the top layers unfrozen.")] = 5,
    fine_tune_learning_rate: Annotated[float, typer.Option(
        help="finetune: learning rate with the top layers unfrozen.")] = 1e-4,
    augment: Annotated[bool, typer.Option(
        help="finetune: random flip/rotation/zoom/contrast (trains through images).")] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="finetune: images per step.")] = 32,
    validation_fraction: Annotated[float, typer.Option(
        min=0.0, max=0.5, help="finetune: share of the train split for early stopping.")] = 0.15,
    seed: Annotated[int, typer.Option(help="finetune: seed of the validation slice and"
                                      " training.")] = 0,
    c: Annotated[float | None, typer.Option(
        "--c", help="logreg: inverse regularisation strength C.")] = None,
) -> None:
    """(Re)train a breed head on the bundle's own train/test split and compare the heads."""
    head = plain(head)
    with clear_errors():
        from classify.finetune import FinetuneParams
        from ui.workflows import train_head

        params = None
        if head == "finetune":
            try:
                params = FinetuneParams(
                    epochs=epochs, learning_rate=learning_rate, unfreeze=unfreeze,
                    fine_tune_epochs=fine_tune_epochs,
                    fine_tune_learning_rate=fine_tune_learning_rate, augment=augment,
                    batch_size=batch_size, validation_fraction=validation_fraction, seed=seed,
                )
            except ValueError as exc:
                raise EmbedDogsError(str(exc)) from None

        def on_epoch(phase: str, epoch: int, total: int, logs: dict[str, float]) -> None:
            shown = "  ".join(f"{k} {v:.4f}" for k, v in logs.items())
            err.print(f"[bold]{phase}[/] epoch {epoch}/{total}  {shown}", highlight=False,
                      soft_wrap=True)

        result = train_head(bundle, head, c=c, params=params, on_epoch=on_epoch)
    record, comparison = result["record"], result["comparison"]
    path = record.get("training_path")
    if isinstance(path, dict):
        ran = f"head on {path['head'].replace('_', ' ')}" + (
            f", then {record['unfrozen_layers']} backbone layers unfrozen on images"
            if path.get("fine_tune") else "")
        console.print(f"trained {head}: {ran}")
    table = Table(title=f"heads of {bundle} (test split; best by {comparison['by']})")
    for col in ("head", "validation top-1", "top-1", "top-5", "train s", "best"):
        table.add_column(col)
    for name, s in comparison["heads"].items():
        validation = s.get("validation_top1")
        table.add_row(name, f"{validation:.1%}" if validation is not None else "-",
                      f"{s['top1']:.1%}" if s["top1"] is not None else "-",
                      f"{s['top5']:.1%}" if s["top5"] is not None else "-",
                      f"{s['train_seconds']:.1f}" if s["train_seconds"] is not None else "-",
                      "*" if name == comparison["best"] else "")
    console.print(table)
    console.print(f"comparison: {bundle / comparison['files']['csv']}")
    if result.get("gate"):
        console.print(f"open-set gate re-calibrated: kNN >= {result['gate']['dog_threshold']:.3f}"
                      f" dog, < {result['gate']['not_dog_threshold']:.3f} not a dog")


@app.command()
def classify(
    inputs: Annotated[list[str], typer.Argument(
        help="Photos, folders (searched recursively), text files listing one path a line,"
        " or - to read such a list from stdin.", show_default=False)],
    bundle: BundleOpt,
    out: Annotated[str, typer.Option(
        "--out", "-o", help="CSV file to write, or - for stdout.")] = "predictions.csv",
    as_json: Annotated[bool, typer.Option(
        "--json", help="Write JSON lines (one object per image) instead of CSV.")] = False,
    top_k: Annotated[int, typer.Option(min=1, help="Breeds per image.")] = 5,
    head: HeadOpt = None,
    runtime: RuntimeOpt = None,
) -> None:
    """Predict the breed of every photo and its nearest look-alike, into a CSV (or JSON lines)."""
    to_stdout = out == "-"
    with clear_errors(), progress_bar("classifying", hidden=to_stdout) as start:
        from ui.workflows import classify_images, open_for_queries, resolve_inputs

        photos = resolve_inputs(inputs, stdin=sys.stdin)
        ctx = open_for_queries(bundle, plain(head), plain(runtime), accepts_images=True)
        target = sys.stdout if to_stdout else Path(out)
        summary = classify_images(ctx, photos, target, top_k, on_start=start,
                                  fmt="jsonl" if as_json else "csv")
    (err if to_stdout else console).print(
        f"{summary['classified']} of {summary['images']} images classified"
        + (f", {summary['failed']} could not be read (see the error column)"
           if summary["failed"] else "")
        + f"; head: {summary['head'] or 'none'}; wrote {summary['out']}"
    )
    print_verdict_counts(summary.get("verdicts"), err if to_stdout else console)


@app.command()
def search(
    image: Annotated[Path, typer.Argument(help="A photo to find look-alikes of.")],
    bundle: BundleOpt,
    k: Annotated[int, typer.Option("-k", min=1, help="How many look-alikes.")] = 8,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = (
        False
    ),
    runtime: RuntimeOpt = None,
    head: HeadOpt = None,
) -> None:
    """The k dataset images most similar to IMAGE, with similarity and breed."""
    with clear_errors():
        from embed.images import ImageDecodeError
        from ui.workflows import look_up_image, open_for_queries

        if not image.is_file():
            raise EmbedDogsError(f"image {image} does not exist")
        ctx = open_for_queries(bundle, plain(head), plain(runtime), accepts_images=True)
        try:
            answer = look_up_image(ctx, image, k, top_breeds=3)
        except ImageDecodeError as exc:
            raise EmbedDogsError(f"cannot use {image}: {exc}") from None
    hits = answer.lookalikes
    if as_json:
        print(json.dumps(search_json(answer), indent=2))
        return
    print_verdict(answer, ctx)
    table = Table(title=f"look-alikes of {image}")
    for col in ("rank", "score", "breed"):
        table.add_column(col)
    table.add_column("path", overflow="fold")
    for rank, hit in enumerate(hits, start=1):
        table.add_row(str(rank), f"{hit['score']:.4f}", str(hit["label"] or "-"), hit["path"])
    console.print(table)


@app.command()
def evaluate(
    bundle: BundleOpt,
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
    not_dogs: Annotated[list[Path] | None, typer.Option(
        "--not-dogs", help="A folder of photos without dogs, to measure the open-set gate"
        " (repeatable).")] = None,
    unknown_breeds: Annotated[list[Path] | None, typer.Option(
        "--unknown-breeds", help="A folder of dogs of breeds the bundle does not know, to"
        " measure the gate (repeatable).")] = None,
    runtime: RuntimeOpt = None,
) -> None:
    """Print the stored test metrics of the bundle's breed heads (with 95% intervals), the
    open-set gate's calibration, and with --not-dogs/--unknown-breeds how the gate does on
    those photos (also written to report/gate_dev.json and .csv)."""
    with clear_errors():
        from embed.bundle import Bundle

        b = Bundle.open(bundle)
        heads = b.manifest.get("heads") or {}
        if not heads:
            raise EmbedDogsError(f"bundle {bundle} has no breed head (was its source labelled?)")
        from classify.evaluation import stored_metrics

        gate_dev = None
        if not_dogs or unknown_breeds:
            from ui.workflows import evaluate_gate

            gate_dev = evaluate_gate(b.root, list(not_dogs or []), list(unknown_breeds or []),
                                     runtime=plain(runtime))
        if as_json:
            print(json.dumps({
                "heads": {name: stored_metrics(b.root, record) for name, record in heads.items()},
                "gate": b.manifest.get("gate"),
                "gate_dev": gate_dev.rows if gate_dev is not None else None,
            }, indent=2, default=str))
            return
        for name, record in heads.items():
            metrics = stored_metrics(b.root, record)
            if metrics.get("top1") is None:
                console.print(f"head {name}: no test images to evaluate on")
                continue
            table = Table(title=head_title(name, record, metrics))
            for col in ("breed", "precision", "recall", "support"):
                table.add_column(col)
            for row in metrics.get("per_breed", []):
                table.add_row(row["breed"], f"{row['precision']:.2f}", f"{row['recall']:.2f}",
                              str(row["support"]))
            console.print(table)
            for pair in metrics.get("most_confused", [])[:5]:
                console.print(f"  confused: {pair['true']} -> {pair['predicted']}"
                              f" ({pair['count']})")
        print_honesty(b)
        if gate_dev is not None:
            print_gate_evaluation(gate_dev, b.root)


@app.command()
def info(
    bundle: BundleOpt,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw manifest.")] = False,
) -> None:
    """What the bundle's manifest says: backbone, source, counts, index, heads, versions."""
    with clear_errors():
        from embed.bundle import Bundle

        manifest = Bundle.open(bundle).manifest
    if as_json:
        print(json.dumps(manifest, indent=2))
        return
    table = Table(title=f"bundle {bundle}", show_header=False)
    for name, value in manifest_facts(manifest):
        table.add_row(name, value)
    console.print(table)


@app.command()
def verify(bundle: BundleOpt) -> None:
    """Check every file of a bundle against the sizes and sha256 its manifest recorded, and
    that shards, metadata, index and heads agree."""
    with clear_errors():
        from ui.workflows import verify_bundle

        report = verify_bundle(bundle)
    if report.problems:
        for problem in report.problems:
            err.print(f"[bold red]problem:[/] {problem}", highlight=False, soft_wrap=True)
        err.print(f"[bold red]error:[/] bundle {bundle} is damaged; rebuild it with"
                  " `embed-dogs build-index`", highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    console.print(f"bundle {bundle} is whole: {report.files} files ({report.bytes / 2**20:.1f}"
                  f" MiB) match their sha256; {report.rows} rows agree across shards,"
                  " metadata and index; heads load")


@app.command()
def backbones() -> None:
    """List the registered backbones with input size, preprocessing and embedding size."""
    from embed.backbones import get_backbone, known_backbones

    table = Table()
    for col in ("name", "keras", "default size", "preprocessing", "dim"):
        table.add_column(col)
    for name in known_backbones():
        s = get_backbone(name)
        kw = ", ".join(f"{k}={v}" for k, v in s.builder_kwargs.items())
        table.add_row(name, f"{s.keras_name}({kw})", str(s.default_image_size), s.preprocessing,
                      str(s.dim))
    console.print(table)


def streamlit_args(port: int, host: str, headless: bool, bundle_dir: str) -> list[str]:
    """`streamlit run` with the app and the options a user's server needs."""
    return [
        "run", str(Path(__file__).resolve().parent / "app.py"),
        "--server.port", str(port), "--server.address", host,
        "--server.headless", str(headless).lower(),
        "--server.showEmailPrompt", "false",  # it reads stdin: exits 255 without a terminal
        "--browser.gatherUsageStats", "false",
        "--client.toolbarMode", "viewer",  # no Deploy button or developer menu for users
        "--", "--bundle", bundle_dir,
    ]


@app.command()
def ui(
    bundle: BundleOpt,
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to serve on.")] = 8501,
    host: Annotated[str, typer.Option(
        help="Address to listen on. 127.0.0.1 serves this machine only; 0.0.0.0 exposes the"
        " app, without authentication, to every network this machine is on.")
    ] = "127.0.0.1",
    headless: Annotated[bool | None, typer.Option(
        "--headless/--browser", help="Do not / do open a browser window (default: open one"
        " only when started from a terminal).", show_default=False)] = None,
) -> None:
    """Open the Streamlit app on a bundle: identify a dog, browse look-alikes and the dataset."""
    bundle_dir = str(bundle.expanduser().resolve())
    if headless is None:
        headless = not (sys.stdin.isatty() and sys.stdout.isatty())
    command = [sys.executable, "-m", "streamlit",
               *streamlit_args(port, host, headless, bundle_dir)]
    env = {**os.environ, "EMBED_DOGS_BUNDLE": bundle_dir}
    console.print(f"serving {bundle_dir} on http://{host}:{port}")
    sys.stdout.flush()
    os.execve(sys.executable, command, env)  # streamlit takes over this process and its signals
# ---- the open-set gate and honest figures in the output ----------------------------------------
VERDICT_TEXT = {
    "dog": "one of the bundle's breeds",
    "unknown_breed": "a dog, but not one of the breeds this bundle knows",
    "not_a_dog": "this doesn't look like a dog",
}


def print_verdict_counts(counts: dict[str, int] | None, out: Console = console) -> None:
    if counts is None:
        out.print("no open-set gate in this bundle (unlabelled, or built before gates): the"
                      " verdict column is empty; `embed-dogs train --head logreg` calibrates one")
        return
    out.print("verdicts: " + ", ".join(f"{v} {n}" for v, n in counts.items()))


def search_json(answer: Any) -> dict[str, Any]:
    """`search --json`: the verdict first, the breeds (for reference), the look-alikes."""
    return {
        "verdict": answer.verdict,
        "knn_similarity": answer.knn_similarity,
        "why": answer.why,
        "breeds": [{"breed": b, "probability": p} for b, p in answer.breeds],
        "lookalikes": answer.lookalikes,
    }


def print_verdict(answer: Any, ctx: Any) -> None:
    """The verdict, and the breed only where the gate says it is one of the bundle's."""
    if answer.verdict is not None:
        console.print(f"verdict: [bold]{answer.verdict}[/] ({VERDICT_TEXT[answer.verdict]})."
                      f" {answer.why}", highlight=False)
    if answer.breeds and ctx.predictor is not None:
        label = "breed" if answer.verdict in (None, "dog") else "closest breeds, for reference"
        console.print(f"{label} ({ctx.predictor.name} head): " + ", ".join(
            f"{breed} {prob:.0%}" for breed, prob in answer.breeds))


def head_title(name: str, record: dict[str, Any], metrics: dict[str, Any]) -> str:
    from classify.intervals import accuracy_interval, format_interval

    validation = (record.get("validation") or {}).get("top1")
    return (f"head {name}: test top-1 {metrics['top1']:.1%}"
            f" ({format_interval(accuracy_interval(metrics, 'top1'))}), top-5"
            f" {metrics['top5']:.1%} ({format_interval(accuracy_interval(metrics, 'top5'))}),"
            f" {metrics['test_images']} images"
            + (f"; validation top-1 {validation:.1%}" if validation is not None else ""))


def print_honesty(bundle: Any) -> None:
    """Which head serves and why, the leakage warning, the gate's calibration."""
    from classify.leakage import leakage_warning
    from classify.selection import choose_best_head

    heads = bundle.manifest.get("heads") or {}
    best, by = choose_best_head(heads)
    if best:
        console.print(f"serving head: {best} (best {by})")
    warning = leakage_warning(bundle)
    if warning:
        console.print(f"[bold yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    gate = bundle.manifest.get("gate")
    if not gate:
        console.print("open-set gate: none (needs labelled train and test rows)")
        return
    figures = gate.get("figures") or {}
    floors = ", ".join(f"{h} {f['top_probability_floor']:.3f}" for h, f in
                       (gate.get("heads") or {}).items() if f.get("top_probability_floor")
                       is not None) or "none"
    console.print(
        f"open-set gate: kNN similarity (mean of {gate['k']} nearest) >="
        f" {gate['dog_threshold']:.3f} for a known breed, < {gate['not_dog_threshold']:.3f}"
        " for not a dog; head top-probability"
        f" floor: {floors}. Calibrated on {figures.get('test_dogs')} held-out test dogs"
        f" ({figures.get('test_dogs_above_dog_threshold', 0):.1%} above the dog threshold);"
        " simulated unknown breeds (each breed left out in turn) not called dog:"
        f" {figures.get('simulated_unknown_breeds_not_called_dog') or 0:.1%}",
        highlight=False, soft_wrap=True)


def print_gate_evaluation(result: Any, root: Path) -> None:
    def share(value: float | None) -> str:
        return "-" if value is None else f"{value:.1%}"

    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    table = Table(title=f"open-set gate on photo sets (head {result.head or 'none'}; AUROC and"
                  " FPR at 95% dog recall against the held-out test dogs)")
    for col in ("set", "should be", "images", "kNN AUROC", "kNN FPR@95", "head AUROC",
                "head FPR@95", "dog", "unknown_breed", "not_a_dog"):
        table.add_column(col, overflow="fold")
    for row in result.rows:
        table.add_row(row["set"], row["kind"], str(row["images"]), number(row["knn_auroc"]),
                      share(row["knn_fpr_at_95"]), number(row["head_auroc"]),
                      share(row["head_fpr_at_95"]), share(row["dog"]),
                      share(row["unknown_breed"]), share(row["not_a_dog"]))
    console.print(table)
    console.print("written: " + ", ".join(str(root / f) for f in result.files.values()))
