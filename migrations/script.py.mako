"""${migration_name}

Revision: ${up_revision} (after ${down_revision | comma,n})
Created: ${create_date}
"""

import sqlalchemy as sa
from alembic import op

revision = ${repr(up_revision)}
down_revision = ${repr(down_revision)}
branch_labels = ${repr(branch_labels)}
depends_on = ${repr(depends_on)}

name = ${repr(migration_name)}
description = ${repr(migration_description)}


def upgrade() -> None:
    ${upgrades if upgrades else 'pass'}


def downgrade() -> None:
    ${downgrades if downgrades else 'pass'}


def validate() -> bool:
    """Runs after upgrade(), in the same transaction: False or an exception rolls this migration back."""
    return True
