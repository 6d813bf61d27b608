"""Errors of model construction that come from configuration values."""


class MixerConfigError(ValueError):
    """A mixer option has a value the mixer cannot use; the message names the config key
    (``model.…``). The trainer turns it into a :class:`pararnn.train.config.ConfigError`."""
