"""Errors shared by every layer."""


class ConfigError(ValueError):
    """A setting is missing or wrong. The message names the setting and the fix."""
