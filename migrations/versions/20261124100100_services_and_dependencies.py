"""Services and the dependencies between them.

Revision: 20261124100100 (after 20261124100000)
"""

from alembic import op

revision = "20261124100100"
down_revision = "20261124100000"
branch_labels = None
depends_on = None

name = "services_and_dependencies"
description = "services owned by workgroups; service dependencies (unique pair, no self-dependency)"


def upgrade() -> None:
    op.execute("""
        create table services (
            id bigint generated always as identity primary key,
            name text not null unique check (name <> ''),
            description text not null default '',
            owner_workgroup_id bigint references workgroup_skills (id),
            tier smallint not null default 3 check (tier between 1 and 4),
            created_at timestamptz not null default now(),
            updated_at timestamptz not null default now()
        )""")
    op.execute("create index services_owner_workgroup_id_idx on services (owner_workgroup_id)")
    op.execute("""
        create table dependencies (
            id bigint generated always as identity primary key,
            service_id bigint not null references services (id) on delete cascade,
            depends_on_service_id bigint not null references services (id) on delete cascade,
            created_at timestamptz not null default now(),
            constraint dependencies_pair_key unique (service_id, depends_on_service_id),
            constraint dependencies_not_self check (service_id <> depends_on_service_id)
        )""")
    op.execute("create index dependencies_depends_on_service_id_idx on dependencies (depends_on_service_id)")


def downgrade() -> None:
    op.execute("drop table dependencies")
    op.execute("drop table services")
