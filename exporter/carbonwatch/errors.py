"""Errors shared by every part."""


class ConfigError(ValueError):
    """Bad configuration, flag, label or input. The message names what is wrong; the CLI exits 2."""
