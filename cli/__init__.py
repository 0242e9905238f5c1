"""The `bullwait` command line: a thin Typer shell over the `bullwait` library."""
