"""Work tasks, their todos and todo dependencies, deliverables and quality checks.

Revision: 20261124100200 (after 20261124100100)
"""

from alembic import op

revision = "20261124100200"
down_revision = "20261124100100"
branch_labels = None
depends_on = None

name = "work_tasks"
description = "work_tasks, todo_items, todo_dependencies, deliverables, quality_checks"


def upgrade() -> None:
    op.execute("""
        create table work_tasks (
            id bigint generated always as identity primary key,
            title text not null check (title <> ''),
            description text not null default '',
            priority task_priority not null default 'medium',
            status task_status not null default 'pending',
            service_id bigint references services (id),
            workgroup_id bigint references workgroup_skills (id),
            is_test boolean not null default false,
            created_at timestamptz not null default now(),
            updated_at timestamptz not null default now(),
            completed_at timestamptz,
            constraint work_tasks_completed_after_created check (completed_at is null or completed_at >= created_at)
        )""")
    op.execute("create index work_tasks_service_id_idx on work_tasks (service_id)")
    op.execute("create index work_tasks_workgroup_id_idx on work_tasks (workgroup_id)")
    op.execute("create index work_tasks_status_idx on work_tasks (status)")
    op.execute("""
        create table todo_items (
            id bigint generated always as identity primary key,
            work_task_id bigint not null references work_tasks (id) on delete cascade,
            title text not null check (title <> ''),
            status todo_status not null default 'pending',
            position integer not null default 0 check (position >= 0),
            is_test boolean not null default false,
            created_at timestamptz not null default now(),
            updated_at timestamptz not null default now()
        )""")
    op.execute("create index todo_items_work_task_id_idx on todo_items (work_task_id)")
    op.execute("""
        create table todo_dependencies (
            todo_id bigint not null references todo_items (id) on delete cascade,
            depends_on_todo_id bigint not null references todo_items (id) on delete cascade,
            primary key (todo_id, depends_on_todo_id),
            constraint todo_dependencies_not_self check (todo_id <> depends_on_todo_id)
        )""")
    op.execute("create index todo_dependencies_depends_on_todo_id_idx on todo_dependencies (depends_on_todo_id)")
    op.execute("""
        create table deliverables (
            id bigint generated always as identity primary key,
            work_task_id bigint not null references work_tasks (id) on delete cascade,
            todo_id bigint references todo_items (id) on delete set null,
            artifact_type_id bigint not null references artifact_types (id),
            name text not null check (name <> ''),
            file_key text,
            status deliverable_status not null default 'draft',
            is_test boolean not null default false,
            created_at timestamptz not null default now(),
            updated_at timestamptz not null default now()
        )""")
    op.execute("create index deliverables_work_task_id_idx on deliverables (work_task_id)")
    op.execute("create index deliverables_todo_id_idx on deliverables (todo_id)")
    op.execute("create index deliverables_artifact_type_id_idx on deliverables (artifact_type_id)")
    op.execute("""
        create table quality_checks (
            id bigint generated always as identity primary key,
            deliverable_id bigint not null references deliverables (id) on delete cascade,
            standard_id bigint not null references quality_standards (id),
            score numeric(5, 2) not null check (score between 0 and 100),
            passed boolean not null,
            details jsonb not null default '{}',
            checked_at timestamptz not null default now()
        )""")
    op.execute("create index quality_checks_deliverable_id_idx on quality_checks (deliverable_id)")
    op.execute("create index quality_checks_standard_id_idx on quality_checks (standard_id)")


def downgrade() -> None:
    for table in ("quality_checks", "deliverables", "todo_dependencies", "todo_items", "work_tasks"):
        op.execute(f"drop table {table}")
