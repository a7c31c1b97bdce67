"""Configuration tables: quality standards, artifact types, workgroup skills; the enum types.

Revision: 20261124100000 (the first)
"""

from alembic import op

revision = "20261124100000"
down_revision = None
branch_labels = None
depends_on = None

name = "configuration_tables"
description = "enum types; quality_standards, artifact_types, workgroup_skills"


def upgrade() -> None:
    op.execute("create type task_priority as enum ('low', 'medium', 'high', 'critical')")
    op.execute("create type task_status as enum ('pending', 'in_progress', 'blocked', 'completed', 'cancelled')")
    op.execute("create type todo_status as enum ('pending', 'in_progress', 'done', 'blocked')")
    op.execute("create type deliverable_status as enum ('draft', 'submitted', 'approved', 'rejected')")
    op.execute("""
        create table quality_standards (
            id bigint generated always as identity primary key,
            key text not null unique check (key ~ '^[a-z][a-z0-9_]*$'),
            name text not null check (name <> ''),
            description text not null default '',
            criteria jsonb not null default '[]' check (jsonb_typeof(criteria) = 'array'),
            threshold smallint not null check (threshold between 0 and 100),
            created_at timestamptz not null default now(),
            updated_at timestamptz not null default now()
        )""")
    op.execute("""
        create table artifact_types (
            id bigint generated always as identity primary key,
            key text not null unique check (key ~ '^[a-z][a-z0-9_]*$'),
            name text not null check (name <> ''),
            description text not null default '',
            extensions text[] not null default '{}',
            standard_id bigint not null references quality_standards (id),
            created_at timestamptz not null default now(),
            updated_at timestamptz not null default now()
        )""")
    op.execute("create index artifact_types_standard_id_idx on artifact_types (standard_id)")
    op.execute("""
        create table workgroup_skills (
            id bigint generated always as identity primary key,
            key text not null unique check (key ~ '^[a-z][a-z0-9_]*$'),
            name text not null check (name <> ''),
            description text not null default '',
            skills text[] not null default '{}',
            artifact_types text[] not null default '{}',
            created_at timestamptz not null default now(),
            updated_at timestamptz not null default now()
        )""")


def downgrade() -> None:
    op.execute("drop table workgroup_skills")
    op.execute("drop table artifact_types")
    op.execute("drop table quality_standards")
    for enum in ("deliverable_status", "todo_status", "task_status", "task_priority"):
        op.execute(f"drop type {enum}")
