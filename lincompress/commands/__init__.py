"""CLI subcommands: one module each, exposing a click command named ``command``."""
