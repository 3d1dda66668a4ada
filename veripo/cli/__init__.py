"""The `veripo` command: one typer app (`main.py`), one module per command group."""
