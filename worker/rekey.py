"""`worktask backup rekey`: key rotation without rewriting data.

Each backup's data key (the manifest's `encryption` block) is unwrapped with this installation's current key
(BACKUP_ENCRYPTION_KEY / BACKUP_KMS_KEY_ID) and wrapped again with the new one, and the manifest's MAC (`auth`)
is made again under the new key; no chunk is read or written. Per backup:

1. read the manifest and authenticate it with the current key (a MAC that fails, or none: refused);
   unwrap its data key with the current key;
2. build the new manifest in memory and read it back as a reader would (checksum, shape, MAC under the new
   key, the data key unwrapped with the new key is the same key);
3. only then replace `manifest.json` with one PUT (S3 PUT is atomic; LocalStore writes a temporary file and
   renames it over the old one).

So a run stopped anywhere leaves every backup readable with the old key or with the new one, never neither,
and nothing beside the manifests (no staged object). The markers (validated.json, verified.json) are left as
they are: they are about the chunks, which do not change.

It runs in the CLI process, never as a Celery job: the new key would otherwise travel in task arguments
(and show in Flower), which never carry a secret.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import SecretStr

from worker import backups
from worker.errors import BadInput, CorruptChunk, ServiceUnavailable
from worker.reports import utcnow
from worker.settings import Settings
from worker.store import ObjectInfo, ObjectStore

KEY_HELP = "base64 of 32 bytes, as `worktask keygen` prints"


def _as_key(text: str) -> bytes | None:
    """The 32 raw bytes when the text is a key (base64 of 32 bytes), else None."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == 32 else None


def read_new_key(value: str, stdin: IO[str]) -> str:
    """The new raw key (base64) from `--new-key FILE` or `--new-key -` (stdin); never the value itself: a key
    given on the command line shows in `ps` to every user of the machine."""
    if _as_key(value):
        raise BadInput("--new-key takes a FILE holding the key, or - to read it from stdin, never the key itself: "
                       "command-line arguments are visible to every user (ps); e.g. worktask keygen > new.key; "
                       "worktask backup rekey --all --new-key new.key")
    if value == "-":
        text, where = stdin.read(), "stdin"
    else:
        try:
            text, where = Path(value).read_text(), value
        except (OSError, UnicodeDecodeError) as err:
            reason = getattr(err, "strerror", None) or type(err).__name__
            raise BadInput(f"--new-key {value}: cannot read it ({reason}); give a file holding the key "
                           f"({KEY_HELP}), or - for stdin") from None
    if not _as_key(text):
        raise BadInput(f"--new-key: {where} does not hold a key ({KEY_HELP}): worktask keygen > new.key")
    return text.strip()


def new_settings(settings: Settings, new_key: str | None, new_kms_key_id: str | None) -> Settings:
    """This installation's settings with the new key as its only key: what signs and wraps, and what the
    new manifest is read back with."""
    if new_kms_key_id:
        return settings.model_copy(update={"backup_kms_key_id": new_kms_key_id, "backup_encryption_key": None})
    return settings.model_copy(update={"backup_encryption_key": SecretStr(new_key or ""), "backup_kms_key_id": None})


def check_new_kms_key(settings: Settings, kms_key_id: str) -> None:
    """The new KMS key can make a data key (the MAC key) and encrypt (the data key): exit 2 naming it if not."""
    from worker.connections import aws_client

    backups.check_kms_key(settings, kms_key_id, flag="--new-kms-key-id")
    try:
        aws_client(settings, "kms").encrypt(KeyId=kms_key_id, Plaintext=b"worktask key-check",
                                            EncryptionContext={"worktask": "key-check"})
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code", "?")
        if code in backups.KMS_REFUSALS:
            raise BadInput(f"--new-kms-key-id {kms_key_id!r}: kms:Encrypt refused ({code}); allow kms:Encrypt on "
                           "it to this role") from None
        raise ServiceUnavailable(f"KMS ({settings.aws_endpoint_url or settings.aws_region}) failed: {code}") from None
    except BotoCoreError as err:
        raise ServiceUnavailable(f"cannot reach KMS at {settings.aws_endpoint_url or settings.aws_region}: "
                                 f"{err}") from None


def _master_id(new: Settings) -> str:
    return backups.master_key_id(base64.b64decode(new.backup_encryption_key.get_secret_value()))  # type: ignore[union-attr]


def describe_key(new: Settings) -> str:
    """The new key as reports name it (no secret: a KMS id, or the hash prefix manifests name a key by)."""
    return f"KMS key {new.backup_kms_key_id}" if new.backup_kms_key_id else f"key {_master_id(new)}"


class _OneObject(ObjectStore):
    """The new manifest, held in memory under its key: read back through read_manifest as a reader would."""

    def __init__(self, key: str, data: bytes):
        self.key, self.data = key, data

    def url(self, key: str = "") -> str:
        return f"memory://{key}"

    def open(self, key: str) -> IO[bytes]:
        if key != self.key:
            raise FileNotFoundError(key)
        return io.BytesIO(self.data)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return iter(())


def under(manifest: dict[str, Any], new: Settings) -> bool:
    """Whether the manifest is already wrapped and signed by the new key (it says so; the MAC is checked after)."""
    auth, enc = manifest.get("auth") or {}, manifest.get("encryption")
    if new.backup_kms_key_id:
        kid = new.backup_kms_key_id
        return auth.get("key") == "kms" and auth.get("kms_key_id") == kid and \
            (enc is None or (enc.get("wrapping") == "kms" and enc.get("kms_key_id") == kid))
    kid = _master_id(new)
    return auth.get("key") == "master" and auth.get("key_id") == kid and \
        (enc is None or (enc.get("wrapping") == "key" and enc.get("master_key_id") == kid))


def rekey_one(settings: Settings, new: Settings, store: ObjectStore, options: dict[str, Any],
              backup_id: str) -> tuple[str, str]:
    """(outcome, reason): `rekeyed`, `already` or `failed`. ServiceUnavailable (and botocore's connection
    errors) go up: the run stops there."""
    key = backups.prefix(options, backup_id) + "manifest.json"
    try:
        manifest = backups.read_manifest(store, options, backup_id)  # format, checksum, id, shape; MAC below
        if under(manifest, new):
            backups.verify_manifest(new, options, manifest)  # it says the new key: it must prove it
            if manifest.get("encryption"):
                backups.data_key(new, backup_id, manifest["encryption"])
            return "already", f"already under the {describe_key(new)}"
        if backups.verify_manifest(settings, options, manifest) is not True:
            return "failed", ("its manifest carries no MAC this installation's key verifies (made without a key, "
                              "or by an older version): rekey re-signs only a manifest it authenticated")
        body = {k: v for k, v in manifest.items() if k not in ("checksum", "auth")}
        data_key = None
        if manifest.get("encryption"):
            data_key = backups.data_key(settings, backup_id, manifest["encryption"])
            body["encryption"] = backups.wrap_data_key(new, backup_id, data_key, new.backup_kms_key_id)
        staged = backups.encode_manifest(backups.sign_manifest(new, options, body))
        # read back as a reader with only the new key would: checksum, shape, MAC, and the same data key
        check = backups.read_manifest(_OneObject(key, staged), options, backup_id, new)
        if data_key is not None and backups.data_key(new, backup_id, check["encryption"]) != data_key:
            return "failed", "the data key wrapped under the new key did not unwrap to the same key; nothing changed"
        if {k: v for k, v in check.items() if k not in ("checksum", "auth", "encryption")} != \
                json.loads(json.dumps({k: v for k, v in body.items() if k != "encryption"}, default=str)):
            return "failed", "the new manifest does not read back as the old one; nothing changed"
    except BadInput as err:
        return "failed", err.message
    except CorruptChunk as err:  # unwrap_key's answer for a wrong BACKUP_ENCRYPTION_KEY
        return "failed", str(err)
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code", "?")
        return "failed", f"KMS refused ({code}): {err.response.get('Error', {}).get('Message', '')}".strip()
    except BotoCoreError as err:
        raise ServiceUnavailable(f"cannot reach KMS at {settings.aws_endpoint_url or settings.aws_region}: "
                                 f"{err}") from None
    try:
        store.put(key, staged)  # one PUT: the old manifest until it returns, the new one after
    except OSError as err:
        return "failed", f"the new manifest could not be written to {store.url(key)} ({err.strerror or err}); " \
                         "the old one is in place"
    except BadInput as err:
        return "failed", f"{err.message}; the old manifest is in place"
    except BotoCoreError as err:
        raise ServiceUnavailable(f"cannot reach the store {store.url()}: {err}") from None
    return "rekeyed", f"now under the {describe_key(new)}"


def targets(store: ObjectStore, options: dict[str, Any], ids: list[str], every: bool) -> list[str]:
    """The backups to rekey: the ids given (each checked: malformed or unknown is exit 2, before anything is
    changed), or with --all every complete backup, oldest first."""
    if every:
        return sorted(b["backup_id"] for b in backups.list_backups(store, options) if b["state"] == "complete")
    for backup_id in ids:
        backups.check_backup_id(backup_id)
    for backup_id in ids:
        try:
            store.get(backups.prefix(options, backup_id) + "manifest.json")
        except FileNotFoundError:
            raise BadInput(f"backup {backup_id} not found in {store.url(options['prefix'])} (no manifest); "
                           "see worktask backup list") from None
    return list(dict.fromkeys(ids))


def rekey(settings: Settings, ids: list[str], every: bool, new_key: str | None, new_kms_key_id: str | None,
          progress: Callable[[dict[str, Any]], None] = lambda _row: None) -> tuple[dict[str, Any], int]:
    """Rekey the backups; the report ({kind, state, ok, error, started_at, finished_at, new_key, backups:
    [{backup_id, outcome, reason}]}) and the exit code: 0, 1 if any failed, 3 when the store or KMS could not be
    reached (the report says how far it got). BadInput (exit 2) before anything is changed."""
    if bool(ids) == bool(every):
        raise BadInput("name the backups to rekey (IDs) or pass --all, not both nor neither")
    if bool(new_key) == bool(new_kms_key_id):
        raise BadInput("give the new key: --new-key FILE (or - for stdin) or --new-kms-key-id ID, exactly one")
    if new_kms_key_id:
        check_new_kms_key(settings, new_kms_key_id)
    new = new_settings(settings, new_key, new_kms_key_id)
    options = backups.store_options(settings)
    store = backups.store_for(settings, options)
    started = utcnow()
    rows: list[dict[str, Any]] = []
    error, code = None, 0
    for backup_id in targets(store, options, ids, every):
        try:
            outcome, reason = rekey_one(settings, new, store, options, backup_id)
        except ServiceUnavailable as err:
            outcome, reason, error, code = "failed", err.message, err.message, 3
        row = {"backup_id": backup_id, "outcome": outcome, "reason": reason}
        rows.append(row)
        progress(row)
        if code == 3:
            break
    failed = [r for r in rows if r["outcome"] == "failed"]
    if failed and error is None:
        error = f"{len(failed)} of {len(rows)} backup(s) not rekeyed: " + \
                "; ".join(f"{r['backup_id']}: {r['reason']}" for r in failed[:3])
    code = code or (1 if failed else 0)
    report = {"job_id": None, "kind": "backup_rekey", "state": "failed" if failed else "succeeded",
              "ok": not failed, "started_at": started.isoformat(), "finished_at": utcnow().isoformat(),
              "dry_run": False, "error": error, "new_key": describe_key(new), "backups": rows}
    return report, code
