"""The error tree. Every expected failure is a WorktaskError: one line, one exit code (DESIGN §6)."""


class WorktaskError(Exception):
    """An expected failure: a one-line message that names the thing and the fix."""

    exit_code = 1

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class BadInput(WorktaskError):
    """Bad input or configuration: nothing was changed."""

    exit_code = 2


class ServiceUnavailable(WorktaskError):
    """A service could not be reached: the message says which one and where it was looked for."""

    exit_code = 3


class JobFailed(WorktaskError):
    """The job ran and failed; its report says what."""

    exit_code = 1


class JobTimeout(WorktaskError):
    """The wait for a job ended at its bound; the job may still be running."""

    exit_code = 1


class PoisonChunk(WorktaskError):
    """A chunk was delivered more times than allowed (its worker keeps dying)."""


class MigrationFailed(JobFailed):
    """A migration failed (or its validate() said no) and was rolled back."""


class SnapshotLost(JobFailed):
    """The exported snapshot is gone (its holder ended): the chunk cannot be read consistently. A backup
    that loses its snapshot starts over from a fresh one, a bounded number of times (tasks/backup.py)."""


# Signals between the worker's own parts. They are not WorktaskErrors on purpose: each is caught by the
# code that raises it or by its caller, and says nothing to the operator by itself.

class CorruptChunk(Exception):
    """A chunk that does not verify: checksum, authentication, compression or row count."""


class LockTimeout(Exception):
    """The snapshot holder could not lock a table in time (its message names who holds it)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class ExportPending(Exception):
    """The DynamoDB export is still running; ask again later."""


class FixPending(Exception):
    """A fix not made now (worker/fixer.py): the row is too young, still referenced, or first seen too recently."""


class CheckFailed(WorktaskError):
    """A health check's failure with a hint of its own (what to do), shown beside it."""

    def __init__(self, detail: str, hint: str):
        super().__init__(detail)
        self.hint = hint
