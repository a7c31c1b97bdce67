"""The DynamoDB table of agent configuration and analysis items (keys PK and SK), created idempotently.

Revision: 20261124100300 (after 20261124100200)
"""

from alembic import context, op

revision = "20261124100300"
down_revision = "20261124100200"
branch_labels = None
depends_on = None

name = "dynamodb_table"
description = "DynamoDB table DYNAMO_TABLE_NAME with string keys PK (hash) and SK (range), on demand"


def _table() -> tuple[object, str]:
    from worker.connections import aws_client

    settings = context.config.attributes["settings"]
    return aws_client(settings, "dynamodb"), settings.dynamo_table_name


def upgrade() -> None:
    if context.is_offline_mode():
        op.execute("-- DynamoDB: create table DYNAMO_TABLE_NAME (PK string hash, SK string range) if missing")
        return
    from worker.dynamo import ensure_table

    client, table = _table()
    ensure_table(client, table)


def downgrade() -> None:
    if context.is_offline_mode():
        op.execute("-- DynamoDB: delete table DYNAMO_TABLE_NAME")
        return
    from worker.dynamo import drop_table

    client, table = _table()
    drop_table(client, table)


def ensure(settings) -> str | None:
    """Run by every `worktask migrate`: the table is outside PostgreSQL and may vanish (moto restarted)."""
    from worker.connections import aws_client
    from worker.dynamo import ensure_table

    if ensure_table(aws_client(settings, "dynamodb"), settings.dynamo_table_name):
        return f"re-created missing DynamoDB table {settings.dynamo_table_name}"
    return None


def validate() -> bool:
    if context.is_offline_mode():
        return True
    client, table = _table()
    keys = {k["AttributeName"]: k["KeyType"] for k in client.describe_table(TableName=table)["Table"]["KeySchema"]}
    return keys == {"PK": "HASH", "SK": "RANGE"}
