"""The DynamoDB table: key schema, idempotent create/drop, item (de)serialisation, export JSON lines."""

from __future__ import annotations

import base64
import gzip
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer
from botocore.exceptions import ClientError

from worker.errors import ExportPending, JobFailed

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
            raise JobFailed(f"DynamoDB kept {len(pending)} writes to {table} "
                            f"unprocessed after {tries} tries (throttled)")


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


# DynamoDB JSON as DynamoDB's export writes it: boto3 hands B / BS values over as bytes, the export
# (and so every backup chunk) holds them as base64 text, at any depth inside M and L.

def _encode(value: dict[str, Any]) -> dict[str, Any]:
    (kind, x), = value.items()
    if kind == "B":
        return {"B": base64.b64encode(x).decode()}
    if kind == "BS":
        return {"BS": [base64.b64encode(b).decode() for b in x]}
    if kind == "M":
        return {"M": {k: _encode(v) for k, v in x.items()}}
    if kind == "L":
        return {"L": [_encode(v) for v in x]}
    return value


def _decode(value: dict[str, Any]) -> dict[str, Any]:
    (kind, x), = value.items()
    if kind == "B":
        return {"B": base64.b64decode(x, validate=True)}
    if kind == "BS":
        return {"BS": [base64.b64decode(b, validate=True) for b in x]}
    if kind == "M":
        return {"M": {k: _decode(v) for k, v in x.items()}}
    if kind == "L":
        return {"L": [_decode(v) for v in x]}
    return value


def to_export(item: dict[str, Any]) -> dict[str, Any]:
    """An item (or key) as the client returns it, bytes for B -> DynamoDB JSON as the export writes it."""
    return {k: _encode(v) for k, v in item.items()}


def from_export(item: dict[str, Any]) -> dict[str, Any]:
    """DynamoDB JSON as the export writes it -> the item as the client takes it (base64 text back to bytes)."""
    return {k: _decode(v) for k, v in item.items()}


def export_line(item: dict[str, Any]) -> bytes:
    """An item as the client returns it -> one line of DynamoDB export JSON ({"Item": ...})."""
    return json.dumps({"Item": to_export(item)}, separators=(",", ":")).encode() + b"\n"


def from_export_line(line: bytes) -> dict[str, Any]:
    """One export JSON line -> the item as the client takes it."""
    return from_export(json.loads(line)["Item"])


# ExportTableToPointInTime: the table as it was at one instant, written by DynamoDB into S3 as gzip
# JSON lines (DYNAMODB_JSON) under <prefix>/AWSDynamoDB/<export id>/data/. moto runs the call but ignores
# ExportTime and writes only the data files (no manifest-files.json), so the data files are found by listing.

def pitr_enabled(client: Any, table: str) -> bool:
    out = client.describe_continuous_backups(TableName=table)["ContinuousBackupsDescription"]
    return out.get("PointInTimeRecoveryDescription", {}).get("PointInTimeRecoveryStatus") == "ENABLED"


def start_export(client: Any, table_arn: str, at: float, bucket: str, prefix: str, token: str) -> str:
    """Ask for an export of the table as it was at `at` (epoch seconds); its ARN. Idempotent per token."""
    out = client.export_table_to_point_in_time(
        TableArn=table_arn, ExportTime=datetime.fromtimestamp(at, UTC), S3Bucket=bucket, S3Prefix=prefix,
        ExportFormat="DYNAMODB_JSON", ExportType="FULL_EXPORT", ClientToken=token)
    return out["ExportDescription"]["ExportArn"]


def wait_export(client: Any, arn: str, deadline: float, patience: float) -> dict[str, Any]:
    """The export's description once COMPLETED. Polls for at most `patience` seconds (then ExportPending, so
    that the caller can retry later without holding a worker), and never past `deadline` (epoch seconds)."""
    until = time.monotonic() + patience
    while True:
        desc = client.describe_export(ExportArn=arn)["ExportDescription"]
        if desc["ExportStatus"] == "COMPLETED":
            return desc
        if desc["ExportStatus"] == "FAILED":
            raise JobFailed(f"DynamoDB export {arn} failed: {desc.get('FailureCode')}: {desc.get('FailureMessage')}")
        if time.time() > deadline:
            raise JobFailed(f"DynamoDB export {arn} did not complete by "
                            f"{datetime.fromtimestamp(deadline, UTC):%Y-%m-%d %H:%M:%S} UTC "
                            "(SNAPSHOT_MAX_LIFETIME bounds the wait)")
        if time.monotonic() > until:
            raise ExportPending(arn)
        time.sleep(1)


def export_data_files(s3: Any, bucket: str, prefix: str) -> list[str]:
    """The export's data files, sorted (every chunk task sees the same list)."""
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/AWSDynamoDB/"):
        keys += [o["Key"] for o in page.get("Contents", []) if "/data/" in o["Key"] and o["Key"].endswith(".gz")]
    return sorted(keys)


def export_items(s3: Any, bucket: str, key: str) -> Iterator[dict[str, Any]]:
    """The items of one data file, streamed, as the client takes them (B as bytes)."""
    body = s3.get_object(Bucket=bucket, Key=key)["Body"]
    with gzip.GzipFile(fileobj=body) as lines:
        for line in lines:
            if line.strip():
                yield from_export_line(line)
