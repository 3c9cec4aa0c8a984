"""``python -m service`` is the ``mixopt`` command."""

from .cli import app

app(prog_name="mixopt")
