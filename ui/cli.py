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

for command in (cli_build.build_index, cli_build.add, cli_build.remove, cli_build.train,
                cli_query.classify, cli_query.search, cli_query.evaluate, cli_audit.audit,
                cli_bundle.info, cli_bundle.verify, cli_bundle.backbones, cli_bundle.ui):
    app.command()(command)

__all__ = ["app", "streamlit_args"]
