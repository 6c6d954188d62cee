"""The one error type for bad input."""


class UsageError(ValueError):
    """Bad input (a yaml file, a config value, a checkpoint path, an argument), found before
    long work starts: one message that names the problem and the fix. The ``rllib`` command
    prints it and exits with code 2."""
