"""User-facing errors: each names the problem and the fix. The CLIs print them without a traceback."""


class BlmError(Exception):
    """A problem with the user's input or setting (bad path, too-short corpus, wrong model, corrupt file)."""


class CorpusError(BlmError):
    """The corpus cannot be read or is unusable as given."""


class CheckpointError(BlmError):
    """A checkpoint is missing, unreadable or not a blm_lab checkpoint."""
