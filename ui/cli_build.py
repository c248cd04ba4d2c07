"""The commands that write a bundle: `build-index`, `add`, `remove` and `train`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from embed.backbones import DEFAULT_BACKBONE, WEIGHTS_HELP
from embed.engines import DEFAULT_ENGINE
from embed.errors import EmbedDogsError
from embed.pipeline import DEFAULT_BATCH_SIZE
from embed.runtimes import DEFAULT_RUNTIME
from embed.sources import DEFAULT_SOURCE, DEFAULT_TEST_FRACTION
from index.choice import DEFAULT_INDEX_KIND, DEFAULT_MEMORY_BUDGET
from ui.cli_common import (
    BundleOpt,
    EngineOpt,
    HeadChoice,
    IndexChoice,
    RayAddressOpt,
    RuntimeChoice,
    RuntimeOpt,
    WorkersOpt,
    clear_errors,
    console,
    epoch_bar,
    err,
    memory_size,
    plain,
    progress_and_epochs,
    progress_bar,
)
from ui.facts import manifest_facts
from ui.workflows import DEFAULT_OUT, BuildConfig


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
        help="Inference runtime; auto: LiteRT int8 where it pays on this CPU for this many"
        " photos and passes its check, else float32 (Keras on a GPU); litert-int8: int8,"
        " checked on this source's images (float32 when it fails).")
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
    fine_tune: Annotated[bool, typer.Option(
        "--fine-tune", help="Try fine-tuning in one command: build into OUT-base, fine-tune"
        " the top of its backbone on the train split (with augmentation), then build OUT with"
        " the tuned backbone; prints before/after figures and each stage's time. A quarter of"
        " the train split is held out of tuning to judge it: where the tuned backbone is not"
        " better there, OUT is rebuilt with the plain one.")] = False,
    unfreeze: Annotated[int, typer.Option(
        min=0, help="--fine-tune: top weighted backbone layers to train.")] = 10,
    head_epochs: Annotated[int, typer.Option(
        min=1, help="--fine-tune: epochs of the head phase.")] = 30,
    tune_epochs: Annotated[int, typer.Option(
        min=0, help="--fine-tune: epochs with the top layers unfrozen.")] = 5,
    keep_tuned: Annotated[bool, typer.Option(
        "--keep-tuned", help="--fine-tune: keep the tuned backbone in OUT even where it did"
        " not pay on the held-out train photos.")] = False,
) -> None:
    """Embed every image of a source into a bundle, build its FAISS index and breed head."""
    config = BuildConfig(
        source=source, out=out, backbone=backbone, weights=weights, image_size=image_size,
        batch_size=batch_size, index_kind=plain(index), memory_budget=memory_budget,
        runtime=plain(runtime),
        test_fraction=test_fraction, overwrite=overwrite, backbone_from=backbone_from,
        engine=plain(engine), ray_address=ray_address, workers=workers,
    )
    began = time.perf_counter()
    clock: dict[str, float] = {}

    def on_source(src: Any) -> Any:
        clock["bar"] = time.perf_counter()  # the bar starts here: its img/s counts from now
        advance = start(len(src.items))

        def advanced(n: int) -> None:
            advance(n)
            clock["last"] = time.perf_counter()

        return advanced

    if fine_tune:
        if backbone_from is not None:
            raise typer.BadParameter("--fine-tune builds its own tuned backbone; drop"
                                     " --backbone-from", param_hint="--fine-tune")
        from classify.finetune import FinetuneParams
        from ui.workflows import HELD_OUT_FRACTION

        params = FinetuneParams(epochs=head_epochs, unfreeze=unfreeze,
                                fine_tune_epochs=tune_epochs, augment=True,
                                validation_fraction=HELD_OUT_FRACTION)
        result = run_fine_tune(config, params, keep_tuned)
    else:
        with clear_errors(), progress_bar("embedding") as start:
            from ui.workflows import build_bundle

            result = build_bundle(config, on_source=on_source)
    print_build_summary(result, time.perf_counter() - began, clock)


def run_fine_tune(config: BuildConfig, params: Any, keep_tuned: bool = False) -> Any:
    """`--fine-tune`: the three stages, then before/after figures and stage times."""
    with clear_errors(), progress_and_epochs("embedding") as (start, on_epoch):
        from ui.workflows import answer_figures, build_finetuned

        done = build_finetuned(config, params,
                               on_source=lambda src: start(len(src.items)), on_epoch=on_epoch,
                               keep_tuned=keep_tuned)
    print_held_out(done)
    before, after = answer_figures(done.base.manifest), answer_figures(done.tuned.manifest)
    table = Table(title=f"--fine-tune: {done.base.bundle} (before) -> {done.tuned.bundle}"
                  f" (after, {done.served} backbone), same test split (only reported)")
    tuned_column = done.served == "plain"  # the tuned backbone's figures, not kept
    for col in ("figure", "before", *(("tuned (not kept)",) if tuned_column else ()), "after"):
        table.add_column(col)
    for key in before:
        values = (before[key], *((done.tried[key],) if tuned_column else ()), after[key])
        table.add_row(key, *("-" if v is None else f"{v:.3f}" for v in values))
    console.print(table)
    times = Table(title="time per stage")
    times.add_column("stage")
    times.add_column("seconds")
    for stage, seconds in done.seconds.items():
        times.add_row(stage, f"{seconds:.1f}")
    times.add_row("total", f"{sum(done.seconds.values()):.1f}")
    console.print(times)
    return done.tuned


def print_held_out(done: Any) -> None:
    """The held-out train photos' figures that chose the backbone, and the choice."""
    if not done.held_out:
        console.print("No train photos were held out of tuning: the tuned backbone is kept"
                      " unjudged.")
        return
    plain_figures, tuned_figures = done.held_out["plain"], done.held_out["tuned"]
    table = Table(title=f"held out of tuning: {plain_figures['photos']} train photos (this"
                  " chooses the backbone)")
    for col in ("figure", "plain", "tuned"):
        table.add_column(col)
    for key in plain_figures:
        if key != "photos":
            table.add_row(key, f"{plain_figures[key]:.3f}", f"{tuned_figures[key]:.3f}")
    console.print(table)
    if done.served == "plain":
        console.print("Tuning did not pay on the held-out photos (it needs learned"
                      " precision@5 above the plain backbone's, and its mean with top-1 above"
                      " too): OUT was rebuilt with the plain backbone (--keep-tuned keeps the"
                      " tuned one).")


def print_build_summary(result: Any, total: float, clock: dict[str, float]) -> None:
    """The build's table (a `BuildResult`): counts, total time, throughput beside the bar's,
    backbone, index, heads, gate and space; then what to run next."""
    stats = result.stats
    table = Table(title=f"bundle {result.bundle}", show_header=False)
    table.add_row("images embedded", str(stats.embedded) + (
        f" ({stats.reused} items reused from the interrupted build)" if stats.reused else ""))
    table.add_row("skipped", f"{stats.skipped}" + (
        f" (see {result.bundle / 'skipped.csv'})" if stats.skipped else ""))
    table.add_row("total time", f"{total:.1f} s (listing, one-time work, embedding, index,"
                  " head and gate)")
    bar_seconds = clock.get("last", 0.0) - clock.get("bar", 0.0)
    table.add_row("throughput", throughput_text(stats, stats.processed / bar_seconds
                                                if bar_seconds > 0 else None)
                  if stats.processed else "nothing left to embed (every item reused)")
    source = result.manifest.source
    if source.get("duplicates"):
        table.add_row("duplicates", f"{source.get('duplicates')} files repeat another file's"
                      " content; each group stays in one split")
    if source.get("near_duplicate_groups") is not None:
        table.add_row("near-duplicates", f"{source.get('near_duplicate_groups')} near-duplicate"
                      " groups kept in one split"
                      f" ({source.get('near_duplicate_rows_moved')} photos moved; similarity"
                      f" >= {source.get('near_duplicate_threshold')['value']:.3f}, calibrated"
                      " on edited copies of this source's photos)")
    shown = ("backbone", "fine-tuned from", "runtime", "runtime choice", "one-time costs",
             "engine", "index", "recall@10 vs exact search", "open-set gate", "look-alike space",
             "precision@5 raw -> learned", "1-NN raw -> learned")
    for name, value in manifest_facts(result.manifest):
        if name in shown or name.startswith("head "):
            table.add_row(name, value)
    if not result.manifest.heads:
        table.add_row("breed head", "none (unlabelled source or no test images)")
    console.print(table)
    console.print(next_steps(result.bundle), highlight=False, soft_wrap=True)


def throughput_text(stats: Any, bar_rate: float | None) -> str:
    """The steady-state images/s, and why the progress bar showed less: its clock started when
    the source was listed, so it also counts the one-time work and the pipeline's start-up."""
    text = (f"{stats.images_per_second:.1f} images/s once running ({stats.processed} images in"
            f" {stats.seconds:.1f} s of the embedding loop)")
    if bar_rate is not None and bar_rate < 0.95 * stats.images_per_second:
        text += (f"; the progress bar's {bar_rate:.1f} img/s is lower: its clock started when"
                 " the source was listed, so it also counts the runtime's one-time work"
                 " (conversion, parity, calibration) and the decoders' start-up")
    elif bar_rate is not None:
        text += f"; the progress bar showed {bar_rate:.1f} img/s"
    return text


def next_steps(bundle: Path) -> str:
    """What to run next on a fresh bundle."""
    return (f"next: embed-dogs ui --bundle {bundle}   (the app: identify, browse, map, report)\n"
            f"  or: embed-dogs classify PHOTOS --bundle {bundle} --out predictions.csv\n"
            f"  or: embed-dogs info --bundle {bundle}")


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
                  + f"; {stats.reused} {'was' if stats.reused == 1 else 'were'} already there")
    if stats.embedded or stats.skipped:
        print_change_effects(bundle)
    else:
        console.print("nothing new: the bundle is unchanged")


def print_change_effects(bundle: Path, removed: bool = False) -> None:
    """After add/remove: the new breeds, what was refitted, what is stale and its fix."""
    from ui.build_flow import change_effects

    effects = change_effects(bundle)
    if effects["new_breeds"]:
        n = len(effects["new_breeds"])
        console.print(f"new breed{'' if n == 1 else 's'}: " + ", ".join(effects["new_breeds"]),
                      highlight=False)
    if effects["refitted"]:
        rows = "the remaining rows" if removed else "the new rows"
        console.print(f"refitted on {rows}: " + ", ".join(effects["refitted"]),
                      highlight=False)
    for item in effects["stale"]:
        fix = (f"embed-dogs train --head {item.split()[-1]} --bundle {bundle}"
               if item.startswith("head ") else f"embed-dogs train --head logreg --bundle {bundle}")
        console.print(f"[bold yellow]stale:[/] {item} (fitted on the old rows, not served);"
                      f" refresh it with `{fix}`", highlight=False, soft_wrap=True)


def remove(
    bundle: BundleOpt,
    patterns: Annotated[list[str] | None, typer.Argument(
        help="Image paths or globs (e.g. 'beagle/*'), absolute or relative to the source.")
    ] = None,
    from_file: Annotated[Path | None, typer.Option(
        "--from-file", help="A text file with one path or glob per line, or the CSV of"
        " `embed-dogs audit` (its path column; exact paths).")] = None,
    issue: Annotated[list[str] | None, typer.Option(
        "--issue", help="With an audit CSV: only its rows of this kind (repeatable), e.g."
        " exact_duplicate.")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="List the images that would go; change nothing.")] = False,
) -> None:
    """Remove images from a bundle, then update its index, breed head and report."""
    with clear_errors():
        from ui.audit_store import paths_from_list
        from ui.workflows import remove_from_bundle, remove_listed

        wanted = list(patterns or [])
        findings = False
        if from_file is not None:
            if not from_file.is_file():
                raise EmbedDogsError(f"list file {from_file} does not exist")
            try:
                listed, findings = paths_from_list(from_file, issue)
            except ValueError as exc:
                raise EmbedDogsError(str(exc)) from None
            if findings and wanted:
                raise EmbedDogsError("give either an audit CSV (--from-file) or paths, not both")
            wanted += listed
        elif issue:
            raise EmbedDogsError("--issue selects rows of an audit CSV: add --from-file FILE")
        if findings:
            result = remove_listed(bundle, wanted, dry_run)
            for path in result.unknown:
                err.print(f"not in the bundle: {path}", highlight=False, soft_wrap=True)
            print_paths(result.removed, bundle)
            verb = "would remove" if dry_run else "removed"
            console.print(f"{verb} {len(result.removed)} images from {bundle}"
                          + (f"; {len(result.unknown)} listed paths are not in it"
                             if result.unknown else "")
                          + (" (dry run: nothing changed)" if dry_run else ""), highlight=False)
            if not dry_run:
                print_change_effects(bundle, removed=True)
            return
        if not wanted:
            raise EmbedDogsError("name the images to remove: paths, globs or --from-file")
        if dry_run:
            from ui.build_flow import matching_paths

            going = matching_paths(bundle, wanted)
            if not going:
                raise EmbedDogsError(f"no image of {bundle} matches {', '.join(wanted)}")
            print_paths(going, bundle)
            console.print(f"would remove {len(going)} images from {bundle} (dry run: nothing"
                          " changed)", highlight=False)
            return
        gone = remove_from_bundle(bundle, wanted)
    print_paths(gone, bundle)
    console.print(f"removed {len(gone)} images from {bundle}", highlight=False)
    print_change_effects(bundle, removed=True)


def print_paths(paths: list[str], bundle: Path) -> None:
    """One photo a line, relative to the bundle's source root."""
    from embed.bundle import Bundle
    from ui.facts import display_path

    root = Bundle.open(bundle).source_root
    for path in paths:
        console.print(f"  {display_path(path, root)}", highlight=False, soft_wrap=True)


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

        with epoch_bar() as on_epoch:
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
    gate = result.get("gate")
    if gate:
        kept = (gate.get("figures") or {}).get("test_split") or {}
        console.print("evidence gate and look-alike space refitted on the train split; test"
                      f" dogs kept as dog: {kept.get('kept_as_dog', 0):.1%}")
