"""The one exception type of the tuning package: a user mistake, phrased as one line."""
from __future__ import annotations


class TuningError(ValueError):
    """Bad tuning or planning input (an unknown parameter, an empty search space, a GPU
    budget the model does not fit in); the message names the option or field."""
