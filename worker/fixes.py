"""What `worktask validate --fix` may change, and how every fix stays reversible and out of the application's way.

Each fix kind, what it changes, and whether it deletes (destructive) or only rewrites values:

    task_status         work task `completed` while todos are open -> `in_progress` (update)
    deliverable_status  deliverable `approved` with a failing quality check -> `submitted` (update)
    orphans             rows whose foreign key points nowhere -> deleted (destructive)
    cycles              the newest edge of a todo dependency cycle -> deleted (destructive)
    duplicate_todos     later todos with the same task, position and title -> deleted, with what cascades
                        from them (destructive)
    dynamo_orphans      DynamoDB TASK# items whose work task does not exist -> deleted (destructive)

FIX_KINDS names the kinds scheduled maintenance may apply unattended (default: the non-destructive ones);
`worktask validate --fix` applies every kind unless --fix-kinds names some. How a fix runs: worker/fixer.py.
This module stays light: settings import it.
"""

from __future__ import annotations

from worker.errors import BadInput

KINDS: dict[str, bool] = {  # kind -> destructive
    "task_status": False,
    "deliverable_status": False,
    "orphans": True,
    "cycles": True,
    "duplicate_todos": True,
    "dynamo_orphans": True,
}
DEFAULT_KINDS = ",".join(k for k, destructive in KINDS.items() if not destructive)


def parse_kinds(text: str | None, what: str = "--fix-kinds") -> list[str]:
    """A comma-separated list of fix kinds (or `all`) -> the kinds, in KINDS order; BadInput naming the known ones."""
    names = [n.strip() for n in (text or "").split(",") if n.strip()]
    if names == ["all"]:
        return list(KINDS)
    unknown = [n for n in names if n not in KINDS]
    if unknown or not names:
        given = ", ".join(map(repr, unknown)) or "nothing"
        raise BadInput(f"{what}: {given} is not a fix kind: give a comma-separated list of {', '.join(KINDS)} "
                       "(or all)")
    return [k for k in KINDS if k in names]

