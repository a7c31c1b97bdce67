"""Connections: PostgreSQL credentials from POSTGRES_* or from Secrets Manager (moto), AWS endpoint honoured."""

from __future__ import annotations

import json
import secrets
from typing import Any

import pytest

from worker.connections import aws_client, pg_connect, pg_params
from worker.errors import BadInput, ServiceUnavailable


def test_postgres_credentials_come_from_the_secret_when_its_arn_is_set(settings: Any) -> None:
    sm = aws_client(settings, "secretsmanager")
    arn = sm.create_secret(Name=f"wt-pg-{secrets.token_hex(3)}", SecretString=json.dumps({
        "username": "postgres", "password": "from-the-secret", "host": settings.postgres_host,
        "port": settings.postgres_port, "dbname": settings.postgres_database}))["ARN"]
    with_secret = settings.model_copy(update={"postgres_secret_arn": arn, "postgres_host": "wrong.invalid",
                                              "postgres_database": "wrong"})
    params = pg_params(with_secret)
    assert params["password"] == "from-the-secret"
    assert (params["host"], params["dbname"]) == (settings.postgres_host, settings.postgres_database)
    with pg_connect(with_secret) as conn:  # trust auth here: the password is sent and ignored
        assert conn.execute("select current_database()").fetchone()[0] == settings.postgres_database


def test_unknown_secret_is_bad_input_naming_the_variable(settings: Any) -> None:
    bad = settings.model_copy(update={"postgres_secret_arn": f"no-such-secret-{secrets.token_hex(3)}"})
    with pytest.raises(BadInput, match="POSTGRES_SECRET_ARN"):
        pg_params(bad)


def test_unreachable_postgres_names_where_it_was_looked_for(settings: Any) -> None:
    dead = settings.model_copy(update={"postgres_host": "127.0.0.1", "postgres_port": 1})
    with pytest.raises(ServiceUnavailable, match=r"PostgreSQL at postgresql://postgres@127.0.0.1:1/"):
        pg_connect(dead)


def test_aws_clients_use_the_endpoint_and_region(settings: Any) -> None:
    client = aws_client(settings, "dynamodb")
    assert client.meta.endpoint_url == settings.aws_endpoint_url
    assert client.meta.region_name == settings.aws_region
    assert "TableNames" in client.list_tables()

