"""Alembic environment. worker/migrator.py hands over the settings and an open connection (online) or
asks for SQL (offline: `worktask migrate --dry-run`). One transaction per migration."""

from alembic import context

config = context.config


def run_offline() -> None:
    context.configure(dialect_name="postgresql", literal_binds=True, transaction_per_migration=True,
                      output_buffer=config.output_buffer)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes["connection"]
    context.configure(connection=connection, transaction_per_migration=True,
                      on_version_apply=config.attributes.get("on_version_apply"))
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
