"""`python -m embed` is the same as the `embed-dogs` command."""

from embed.cli import app

app(prog_name="embed-dogs")
