"""The ``openfluoro`` command line."""

from __future__ import annotations

import typer

app = typer.Typer(help="OpenFluoro: an open virtual fluoroscope.", no_args_is_help=True, add_completion=False)

if __name__ == "__main__":
    app()
