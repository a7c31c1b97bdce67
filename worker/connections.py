"""Connections to the services: PostgreSQL, Redis, AWS. Nothing connects at import, and boto3 and psycopg are
imported by the function that needs them (a CLI command that only talks to Redis does not load them)."""

from __future__ import annotations

import json
import logging
import os
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import redis

from worker.errors import BadInput, ServiceUnavailable
from worker.settings import Settings, mask_url

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger(__name__)


def aws_client(settings: Settings, service: str) -> Any:
    """A boto3 client honouring AWS_REGION and AWS_ENDPOINT_URL, with bounded timeouts and retries."""
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=5, read_timeout=60, retries={"max_attempts": 5, "mode": "standard"})
    return boto3.session.Session().client(
        service, region_name=settings.aws_region, endpoint_url=settings.aws_endpoint_url, config=config
    )


_SHARED: dict[tuple[Any, ...], Any] = {}


def shared_aws_client(settings: Settings, service: str) -> Any:
    """One client per process, service, region and endpoint, reused (making a boto3 client costs ~0.1 s, more
    than the call it makes; clients are thread-safe). A forked process makes its own."""
    key = (os.getpid(), service, settings.aws_region, settings.aws_endpoint_url)
    if key not in _SHARED:
        _SHARED[key] = aws_client(settings, service)
    return _SHARED[key]


@lru_cache(maxsize=8)
def _secret(arn: str, region: str, endpoint: str | None) -> tuple[tuple[str, str], ...]:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    client = boto3.session.Session().client(
        "secretsmanager", region_name=region, endpoint_url=endpoint,
        config=Config(connect_timeout=5, read_timeout=15, retries={"max_attempts": 3}),
    )
    try:
        raw = client.get_secret_value(SecretId=arn)["SecretString"]
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code", "")
        if code in ("ResourceNotFoundException", "AccessDeniedException", "InvalidParameterException"):
            raise BadInput(f"POSTGRES_SECRET_ARN {arn}: {code}; set it to a secret this role can read") from None
        raise ServiceUnavailable(f"Secrets Manager ({endpoint or region}) failed: {code}") from None
    except BotoCoreError as err:
        raise ServiceUnavailable(f"cannot reach Secrets Manager at {endpoint or region}: {err}") from None
    try:
        data = json.loads(raw)
    except ValueError:
        raise BadInput(f"POSTGRES_SECRET_ARN {arn} does not hold JSON with username and password") from None
    return tuple((k, str(v)) for k, v in data.items() if v is not None)


def pg_params(settings: Settings, dbname: str | None = None) -> dict[str, Any]:
    """psycopg/libpq keyword parameters: POSTGRES_* or, when POSTGRES_SECRET_ARN is set, the secret's values."""
    params: dict[str, Any] = {
        "host": settings.postgres_host,
        "port": settings.postgres_port,
        "dbname": settings.postgres_database,
        "user": settings.postgres_user,
        "connect_timeout": settings.postgres_connect_timeout,
        "application_name": "worktask-data",
    }
    if settings.postgres_password is not None:
        params["password"] = settings.postgres_password.get_secret_value()
    if settings.postgres_secret_arn:
        secret = dict(_secret(settings.postgres_secret_arn, settings.aws_region, settings.aws_endpoint_url))
        for src, dst in (("username", "user"), ("password", "password"), ("host", "host"),
                         ("port", "port"), ("dbname", "dbname")):
            if secret.get(src):
                params[dst] = secret[src]
    if dbname is not None:
        params["dbname"] = dbname
    return params


def pg_where(params: dict[str, Any]) -> str:
    """Where PostgreSQL was looked for, without the password."""
    return f"postgresql://{params['user']}@{params['host']}:{params['port']}/{params['dbname']}"


def pg_connect(settings: Settings, dbname: str | None = None, **kw: Any) -> psycopg.Connection:
    import psycopg

    params = {**pg_params(settings, dbname), **kw}
    try:
        return psycopg.connect(**params)
    except psycopg.OperationalError as err:
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise ServiceUnavailable(f"cannot reach PostgreSQL at {pg_where(params)}: {reason}") from None


def redis_url(url: str) -> str:
    """kombu's redis+socket:///path is redis-py's unix:///path."""
    if url.startswith("redis+socket://"):
        parts = urlsplit(url)
        return f"unix://{parts.path}" + (f"?{parts.query}" if parts.query else "")
    return url


def redis_client(settings: Settings, url: str | None = None) -> redis.Redis:
    return redis.Redis.from_url(
        redis_url(url or settings.result_backend),
        socket_connect_timeout=3, socket_timeout=10, decode_responses=True,
    )


def check_redis(settings: Settings) -> redis.Redis:
    """The job store's client, after a ping; ServiceUnavailable naming the URL when it does not answer."""
    for name, url in (("CELERY_BROKER_URL", settings.celery_broker_url),
                      ("CELERY_RESULT_BACKEND", settings.result_backend)):
        client = redis_client(settings, url)
        try:
            client.ping()
        except redis.RedisError as err:
            raise ServiceUnavailable(f"cannot reach Redis at {mask_url(url)} ({name}): {err}") from None
    return client
