"""The DynamoDB table: key schema, idempotent create/drop, item (de)serialisation."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from worker.errors import JobFailed

KEY_SCHEMA = [{"AttributeName": "PK", "KeyType": "HASH"}, {"AttributeName": "SK", "KeyType": "RANGE"}]
ATTRIBUTES = [{"AttributeName": "PK", "AttributeType": "S"}, {"AttributeName": "SK", "AttributeType": "S"}]
WAIT = {"Delay": 1, "MaxAttempts": 60}  # bounded: a minute at most

_ser, _de = TypeSerializer(), TypeDeserializer()


def exists(client: Any, table: str) -> bool:
    try:
        client.describe_table(TableName=table)
        return True
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
            return False
        raise


def ensure_table(client: Any, table: str) -> bool:
    """Create the table if missing; True when it was created."""
    if exists(client, table):
        return False
    try:
        client.create_table(TableName=table, KeySchema=KEY_SCHEMA, AttributeDefinitions=ATTRIBUTES,
                            BillingMode="PAY_PER_REQUEST")
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") != "ResourceInUseException":  # created meanwhile
            raise
    client.get_waiter("table_exists").wait(TableName=table, WaiterConfig=WAIT)
    return True


def drop_table(client: Any, table: str) -> bool:
    if not exists(client, table):
        return False
    client.delete_table(TableName=table)
    client.get_waiter("table_not_exists").wait(TableName=table, WaiterConfig=WAIT)
    return True


def batch_write(client: Any, table: str, requests: list[dict[str, Any]], tries: int = 10) -> None:
    """BatchWriteItem in batches of 25, retrying UnprocessedItems with an exponential backoff, bounded."""
    for i in range(0, len(requests), 25):
        pending = requests[i:i + 25]
        for attempt in range(tries):
            out = client.batch_write_item(RequestItems={table: pending})
            pending = out.get("UnprocessedItems", {}).get(table, [])
            if not pending:
                break
            time.sleep(min(0.05 * 2 ** attempt, 5))
        if pending:
            raise JobFailed(f"DynamoDB kept {len(pending)} writes to {table} unprocessed after {tries} tries (throttled)")


def _numbers(value: Any) -> Any:
    if isinstance(value, float):
        return Decimal(str(value))
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, set)):
        return [_plain(v) for v in value]
    return value


def to_item(data: dict[str, Any]) -> dict[str, Any]:
    """A plain dict (floats allowed) as a DynamoDB item."""
    return {k: _ser.serialize(_numbers(v)) for k, v in data.items()}


def from_item(item: dict[str, Any]) -> dict[str, Any]:
    """A DynamoDB item as a plain dict (numbers as int or float)."""
    return {k: _plain(_de.deserialize(v)) for k, v in item.items()}
