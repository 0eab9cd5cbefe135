"""The errors of bad input, on the ground floor: any module may raise them without importing upward."""


class ConfigError(ValueError):
    """A bad configuration value or key; the message names it."""
