"""`python -m ui` is the same as the `embed-dogs` command."""

from ui.cli import app

app(prog_name="embed-dogs")
