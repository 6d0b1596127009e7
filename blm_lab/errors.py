"""Every error blm_lab raises on purpose: each names the problem and the fix.

The command-line tools catch ``BlmError`` (and only it) and print one line, ``error: ...``, with exit
status 2. Anything else is a bug and keeps its traceback.
"""


class BlmError(Exception):
    """A problem with the user's input or setting (bad path, too-short corpus, wrong model, corrupt file)."""


class ConfigError(BlmError, ValueError):
    """A setting that cannot work: a model shape, a training flag, a notebook parameter."""


class PathError(BlmError):
    """A file or directory that cannot be read or written as asked."""


class CorpusError(BlmError):
    """The corpus cannot be read or is unusable as given."""


class CheckpointError(BlmError):
    """A checkpoint is missing, unreadable, unsafe to load, or not a blm_lab checkpoint."""


class ContainerError(BlmError):
    """The file is not a blm_lab compressed file, or it is corrupted or truncated."""


class CompressionError(BlmError):
    """The file cannot be decompressed with this model or setting, or it is damaged."""


class StreamError(BlmError):
    """A coded stream is impossible under the frequencies given: the stream is damaged, or the frequencies
    are not the ones the encoder used."""


class ExternalProgramError(BlmError):
    """An external compressor named in the comparison is missing, failed, or wrote nothing where it should."""


class NotebookError(BlmError):
    """A notebook cell raised: names the notebook, the cell (its In [N] in the executed notebook) and the error."""

    def __init__(self, notebook: str, cell: int, ename: str, evalue: str, executed=None):
        self.notebook, self.cell, self.ename, self.evalue, self.executed = notebook, cell, ename, evalue, executed
        first_line = (evalue or "").strip().splitlines()[0] if (evalue or "").strip() else ""
        where = f"; the executed notebook is {executed}" if executed else ""
        super().__init__(f"notebook {notebook} failed in cell {cell}: {ename}: {first_line}{where}")


EXIT_ERROR = 2  # the exit status of a command that stopped on a BlmError
EXIT_INTERRUPTED = 130


def exit_status(command, interrupted: str = "interrupted") -> int:
    """Run ``command()`` for a command-line tool: its return value, or 2 after printing a BlmError as one
    ``error: ...`` line, or 130 after printing ``interrupted`` on Ctrl-C. Every other exception is a bug
    and propagates with its traceback."""
    import sys

    try:
        return command()
    except BlmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return EXIT_INTERRUPTED
