"""The commands about a bundle and the tool: `info`, `verify`, `backbones` and `ui` (the app)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.columns import Columns
from rich.table import Table

from ui.cli_common import BundleOpt, clear_errors, console, err
from ui.facts import breed_counts, manifest_facts


def info(
    bundle: BundleOpt,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw manifest.")] = False,
) -> None:
    """What the bundle holds: its breeds and how many photos each, then what the manifest says
    (backbone, source, counts, index, heads, versions)."""
    with clear_errors():
        from embed.bundle import Bundle

        opened = Bundle.open(bundle)
        manifest = opened.manifest
        breeds = breed_counts(opened.metadata()) if not as_json else []
    if as_json:
        print(manifest.to_json())
        return
    table = Table(title=f"bundle {bundle}", show_header=False)
    table.add_column()
    table.add_column(overflow="fold")  # a long weights path folds whole instead of ending in …
    for name, value in manifest_facts(manifest):
        table.add_row(name, value)
    console.print(table)
    known = [b for b in breeds if b[0] != "(unlabelled)"]
    console.print(f"breeds ({len(known)}), photos each:", highlight=False)
    console.print(Columns([f"{b.replace('_', ' ')} {n}" for b, n in breeds], padding=(0, 3)),
                  highlight=False)


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


def backbones() -> None:
    """List the registered backbones with input size, preprocessing and embedding size."""
    from embed.backbones import get_backbone, known_backbones

    table = Table()
    for col in ("name", "keras", "default size", "preprocessing", "dim"):
        table.add_column(col)
    for name in known_backbones():
        s = get_backbone(name)
        kw = ", ".join(f"{k}={v}" for k, v in s.builder_kwargs.items())
        # a space before the options lets the cell wrap there at 80 columns instead of cutting
        # "MobileNet(alpha=…", which hid the one thing telling mobilenet_025 from _050
        table.add_row(name, f"{s.keras_name} ({kw})" if kw else s.keras_name,
                      str(s.default_image_size), s.preprocessing, str(s.dim))
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
