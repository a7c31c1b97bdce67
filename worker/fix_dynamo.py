"""The DynamoDB fix (`dynamo_orphans`): TASK# items whose work task does not exist are deleted, never racing the
application that writes an item first and commits its work task a moment later:

1. each item is read again (consistent read) and aged: its created_at / updated_at attributes, else the second
   look over the whole item (worker/fix_gate.py) — a first sighting is only recorded;
2. PostgreSQL is asked again for the work tasks of the items left;
3. those items are kept whole in the quarantine (worker/quarantine.py);
4. right before each batch of deletes PostgreSQL is asked once more, and each delete is conditional on the item
   having every attribute as it was read; an item not deleted after all (its task appeared, it changed) is
   dropped from the quarantine by a corrected object that replaces the first.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from worker.backups import store_for
from worker.dynamo import to_export
from worker.errors import FixPending
from worker.fixer import Fixer, Outcome

BATCH = 25


def item_age(item: dict[str, Any]) -> float | None:
    """Seconds since the item's created_at / updated_at (ISO 8601 text or epoch seconds), the newest; None without."""
    stamps = []
    for name in ("created_at", "updated_at"):
        value = item.get(name, {})
        try:
            if "N" in value:
                stamps.append(float(value["N"]) / (1000 if float(value["N"]) > 1e11 else 1))
            elif "S" in value:
                stamp = datetime.fromisoformat(value["S"].replace("Z", "+00:00"))
                stamps.append((stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)).timestamp())
        except ValueError:
            continue
    return time.time() - max(stamps) if stamps else None


def unchanged(item: dict[str, Any]) -> dict[str, Any]:
    """delete_item arguments: the delete happens only if every attribute is still as read."""
    names, values, conds = {}, {}, ["attribute_exists(PK)"]
    for n, (attr, value) in enumerate(sorted(item.items())):
        names[f"#a{n}"], values[f":v{n}"] = attr, value
        conds.append(f"#a{n} = :v{n}")
    return {"ConditionExpression": " AND ".join(conds), "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values}


def delete_items(fx: Fixer, client: Any, table: str, candidates: list[tuple[int, str, dict[str, Any]]],
                 still_missing: Callable[[list[int]], set[int]]) -> dict[str, Outcome]:
    """Fix the candidates (work task id, issue key, item as scanned); each one's outcome by issue key."""
    refused = fx.gate.refusal("dynamo_orphans")
    if refused:
        return {key: Outcome(*refused) for _, key, _ in candidates}
    out: dict[str, Outcome] = {}
    chosen = []
    for task_id, key, raw in candidates:
        item = client.get_item(TableName=table, Key={"PK": raw["PK"], "SK": raw["SK"]},
                               ConsistentRead=True).get("Item")
        if item is None:
            out[key] = Outcome("skipped", "no longer found when fixing: deleted meanwhile")
            continue
        try:
            age = item_age(item)
            if age is None:
                fx.gate.second_look("dynamo_orphans", table, key, [json.dumps(to_export(item), sort_keys=True)])
            else:
                fx.gate.young(table, age)
        except FixPending as why:
            out[key] = Outcome("pending", str(why))
            continue
        chosen.append((task_id, key, item))
    exists_now = "its work task exists now (committed after the scan): not deleted"
    missing = still_missing([t for t, _, _ in chosen]) if chosen else set()
    for task_id, key, _ in chosen:
        if task_id not in missing:
            out[key] = Outcome("skipped", exists_now)
    chosen = [c for c in chosen if c[0] in missing]
    if not chosen:
        return out
    fx.changes = [change(table, [i for _, _, i in chosen])]
    first = fx.keep(None)
    deleted = []
    for n in range(0, len(chosen), BATCH):
        batch = chosen[n:n + BATCH]
        missing = still_missing([t for t, _, _ in batch])  # once more, right before the deletes
        for task_id, key, item in batch:
            if task_id not in missing:
                out[key] = Outcome("skipped", exists_now)
                continue
            try:
                client.delete_item(TableName=table, Key={"PK": item["PK"], "SK": item["SK"]}, **unchanged(item))
            except client.exceptions.ConditionalCheckFailedException:
                out[key] = Outcome("pending", "the item changed since it was read: left for a later run")
                continue
            out[key] = Outcome("fixed")
            deleted.append(item)
    if len(deleted) != len(chosen):  # the quarantine says exactly what was deleted
        fx.kept -= len(chosen)
        fx.changes = [change(table, deleted)] if deleted else []
        if deleted:
            fx.keep(None)
        store_for(fx.settings, fx.options).delete([first])
    fx.changes = []
    fx.gate.forget()
    return out


def change(table: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"kind": "dynamo_orphans", "store": "dynamodb", "table": table, "action": "delete",
            "rows": [{"key": to_export({"PK": i["PK"], "SK": i["SK"]}), "before": to_export(i)} for i in items]}

