"""The one error model preparation reports: a single line for the user, no traceback."""


class PrepareError(Exception):
    """Preparation failed for a reason the user can act on (offline, disk full, missing extra)."""
