"""``python -m lineside ARGS`` runs what ``lineside ARGS`` runs."""

from lineside.cli import app

app(prog_name="lineside")
