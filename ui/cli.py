"""`embed-dogs`: thin commands over the library; they parse options, own the progress bar and
turn the library's expected failures into one clear line and a non-zero exit.

The typer app and what the commands share live in `ui.cli_common`, the commands in
`ui.cli_build` (writing a bundle), `ui.cli_query` (asking one) and `ui.cli_bundle` (about a
bundle and the tool), their printing in `ui.cli_output`. They are registered here, in the
order `--help` lists them. `ui.cli:app` is the console script's entry point; `python -m ui`
runs the same app.
"""

from __future__ import annotations

from ui import cli_audit, cli_build, cli_bundle, cli_query
from ui.cli_bundle import streamlit_args
from ui.cli_common import app

# One line each in `embed-dogs --help` (click would cut each docstring's first sentence with
# "..." at 80 columns); `embed-dogs COMMAND --help` shows the whole docstring.
SUMMARIES = (
    (cli_build.build_index, "Embed a folder or Stanford Dogs into a new bundle."),
    (cli_build.add, "Add new photos to a bundle, refit what depends on them."),
    (cli_build.remove, "Remove photos from a bundle (--dry-run lists them)."),
    (cli_build.train, "(Re)train a breed head on the bundle's train split."),
    (cli_query.classify, "Breed, verdict and look-alikes of every photo -> CSV."),
    (cli_query.search, "The photos of the bundle most like one image."),
    (cli_query.evaluate, "Test metrics of the heads and the not-a-dog gate."),
    (cli_audit.audit, "Find duplicates, leaks, likely wrong labels, non-dogs."),
    (cli_bundle.info, "What a bundle holds: breeds, counts, accuracy, gate."),
    (cli_bundle.verify, "Check every file of a bundle against its checksum."),
    (cli_bundle.backbones, "The backbones you can build with."),
    (cli_bundle.ui, "Open the app: identify, browse, map, report, audit."),
)
for command, summary in SUMMARIES:
    app.command(short_help=summary)(command)

__all__ = ["app", "streamlit_args"]
