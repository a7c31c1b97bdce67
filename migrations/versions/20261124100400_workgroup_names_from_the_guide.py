"""Workgroup names as the guide writes them.

Revision: 20261124100400 (after 20261124100300)

Four seeded workgroups had names that differ from the guide's; this moves existing rows to the guide's
names by key, so their ids (and every foreign key to them) stay. A row whose name an operator changed
to something else is left alone; seeds/workgroup_skills.yaml holds the same names for new installations.
"""

from alembic import op

revision = "20261124100400"
down_revision = "20261124100300"
branch_labels = None
depends_on = None

name = "workgroup_names_from_the_guide"
description = "rename four workgroups to the guide's names (frontend, backend, qa, mobile), by key, ids kept"

RENAMES = {  # key: (old name, the guide's name)
    "frontend": ("Frontend Team", "Frontend Development Team"),
    "backend": ("Backend Team", "Backend Development Team"),
    "qa": ("Quality Assurance Team", "QA Team"),
    "mobile": ("Mobile Team", "Mobile Development Team"),
}


def _rename(frm: int, to: int) -> None:
    for key, names in RENAMES.items():
        op.execute(f"update workgroup_skills set name = '{names[to]}', updated_at = now() "
                   f"where key = '{key}' and name = '{names[frm]}'")


def upgrade() -> None:
    _rename(0, 1)


def downgrade() -> None:
    _rename(1, 0)


def validate() -> bool:
    """Runs after upgrade(), in the same transaction: no seeded row keeps an old name."""
    pairs = " or ".join(f"(key = '{key}' and name = '{old}')" for key, (old, _) in RENAMES.items())
    return op.get_bind().exec_driver_sql(f"select count(*) from workgroup_skills where {pairs}").scalar() == 0
