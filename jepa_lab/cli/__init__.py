"""The ``jepa-lab`` command line (Typer, rich): commands, shared options, local workers and
terminal tables."""
