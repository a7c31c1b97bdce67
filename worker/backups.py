"""Backups in the object store (DESIGN §9): ids, layout, keys, manifest, listing.

    BACKUP_PREFIX/<id>/manifest.json                    written last: no manifest, no backup
    BACKUP_PREFIX/<id>/failed.json                      written when the backup failed
    BACKUP_PREFIX/<id>/postgres/<table>/<n>.<token>.<ext>
    BACKUP_PREFIX/<id>/dynamodb/<table>/<n>.<token>.<ext>

The manifest's format, field by field, and how it is built: worker/manifest.py. What is kept beside it
(validated.json, verified.json): worker/markers.py. Retention (what cleanup deletes): worker/retention.py.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.hmac import HMAC
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from worker import markers
from worker.archive import new_data_key, unwrap_key, wrap_key
from worker.connections import aws_client
from worker.errors import BadInput, ServiceUnavailable
from worker.manifest import FORMAT_VERSION, check_format, validate  # noqa: F401 - the format: worker/manifest.py
from worker.settings import Settings
from worker.store import LocalStore, ObjectStore, S3Store

ID_RE = re.compile(r"(\d{8}T\d{6}Z)-[0-9A-Za-z-]{1,60}")  # matched whole (fullmatch)
_key_cache: dict[tuple[str, str], bytes] = {}



def new_backup_id() -> str:
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-backup-{secrets.token_hex(3)}"


def check_backup_id(value: str) -> str:
    if not ID_RE.fullmatch(value or ""):
        raise BadInput(f"backup id {value!r} is malformed: expected e.g. 20261124T101500Z-backup-1a2b3c "
                       "(see worktask backup list)")
    return value


def created_at(backup_id: str) -> datetime:
    stamp = ID_RE.fullmatch(backup_id).group(1)  # type: ignore[union-attr]
    return datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def store_options(settings: Settings) -> dict[str, Any]:
    """Where and how a job's backup is written; part of the job's options (no secrets)."""
    return {"s3_bucket": settings.s3_bucket_name, "backup_dir": str(settings.backup_folder),
            "prefix": settings.backup_prefix}


def backup_options(settings: Settings, compress: bool | None = None, encrypt: bool | None = None,
                   chunk_rows: int | None = None, skip_dynamodb: bool = False) -> dict[str, Any]:
    """A backup job's options, the same for `worktask backup` and the nightly one from beat (no secrets:
    the key stays in the workers' settings). None takes the setting."""
    return {**store_options(settings),
            "compress": settings.compression_enabled if compress is None else compress,
            "encrypt": settings.encryption_enabled if encrypt is None else encrypt,
            "chunk_rows": chunk_rows or settings.chunk_rows, "dynamo_segments": settings.dynamo_segments,
            "kms_key_id": settings.backup_kms_key_id, "rate_limit": settings.backup_rate_limit,
            "lock_timeout": settings.backup_lock_timeout,
            "skip_dynamodb": skip_dynamodb}  # a flag of `worktask backup` only: the nightly one takes everything


def store_for(settings: Settings, options: dict[str, Any] | None = None) -> ObjectStore:
    """The one store factory: the store a job's options name (the submitting CLI's choice, carried to the
    workers), or without options this process's own (S3_BUCKET_NAME, else Settings.backup_folder)."""
    if options is None:
        options = store_options(settings)
    if options.get("s3_bucket"):
        return S3Store(settings, options["s3_bucket"])
    return LocalStore(Path(options["backup_dir"]))


def prefix(options: dict[str, Any], backup_id: str) -> str:
    return f"{options['prefix']}/{backup_id}/"


def chunk_ext(compressed: bool, encrypted: bool) -> str:
    return ".".join(["data"] + (["zst"] if compressed else []) + (["aes"] if encrypted else []))


def chunk_key(options: dict[str, Any], backup_id: str, store: str, table: str, n: int, token: str) -> str:
    ext = chunk_ext(options["compress"], options["encrypt"])
    return f"{prefix(options, backup_id)}{store}/{table}/{n:05d}.{token}.{ext}"


def chunk_aad(backup_id: str, store: str, table: str, n: int) -> str:
    """What a chunk's encryption is bound to: it cannot be moved to another backup, table or position."""
    return f"{backup_id}/{store}/{table}/{n}"


# keys ---------------------------------------------------------------------------------------------

def require_key(settings: Settings, encrypt: bool) -> None:
    if encrypt and not (settings.backup_encryption_key or settings.backup_kms_key_id):
        raise BadInput("ENCRYPTION_ENABLED=true needs BACKUP_ENCRYPTION_KEY (worktask keygen prints one) or "
                       "BACKUP_KMS_KEY_ID; or set ENCRYPTION_ENABLED=false")


KMS_REFUSALS = ("NotFoundException", "DisabledException", "AccessDeniedException", "InvalidKeyUsageException",
                "KMSInvalidStateException", "NotAuthorizedException")


def check_kms_key(settings: Settings, kms_key_id: str, flag: str | None = None) -> None:
    """Before a backup is submitted: the KMS key can make a data key (the call the backup makes; no other
    permission needed). A key that does not exist or may not be used is bad configuration (exit 2), not a
    failed job with a failed backup left in the store. `flag`: the option that named the key (the message
    names it instead of BACKUP_KMS_KEY_ID)."""
    from botocore.exceptions import BotoCoreError

    try:
        aws_client(settings, "kms").generate_data_key(KeyId=kms_key_id, KeySpec="AES_256",
                                                      EncryptionContext={"worktask": "key-check"})
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code", "")
        if code in KMS_REFUSALS and flag:
            raise BadInput(f"{flag} {kms_key_id!r}: {code}; give a KMS key this role may use "
                           "(kms:GenerateDataKey, kms:Encrypt)") from None
        if code in KMS_REFUSALS:
            raise BadInput(f"BACKUP_KMS_KEY_ID={kms_key_id!r}: {code}; set it to a KMS key this role may use "
                           "(kms:GenerateDataKey), or unset it to use BACKUP_ENCRYPTION_KEY") from None
        raise ServiceUnavailable(f"KMS ({settings.aws_endpoint_url or settings.aws_region}) failed: {code}") from None
    except BotoCoreError as err:
        raise ServiceUnavailable(f"cannot reach KMS at {settings.aws_endpoint_url or settings.aws_region}: "
                                 f"{err}") from None


def make_data_key(settings: Settings, backup_id: str, kms_key_id: str | None) -> tuple[bytes, dict[str, Any]]:
    """A fresh data key and how it is kept in the manifest (wrapped, never in clear)."""
    if kms_key_id:
        out = aws_client(settings, "kms").generate_data_key(
            KeyId=kms_key_id, KeySpec="AES_256", EncryptionContext={"backup_id": backup_id})
        return out["Plaintext"], {"wrapping": "kms", "kms_key_id": kms_key_id,
                                  "wrapped_key": base64.b64encode(out["CiphertextBlob"]).decode()}
    key = new_data_key()
    return key, wrap_data_key(settings, backup_id, key, None)


def wrap_data_key(settings: Settings, backup_id: str, key: bytes, kms_key_id: str | None) -> dict[str, Any]:
    """The manifest's `encryption` block for this data key: wrapped by the KMS key (kms:Encrypt, the same
    encryption context as GenerateDataKey) or else by BACKUP_ENCRYPTION_KEY. make_data_key and `backup rekey`."""
    if kms_key_id:
        blob = aws_client(settings, "kms").encrypt(KeyId=kms_key_id, Plaintext=key,
                                                   EncryptionContext={"backup_id": backup_id})["CiphertextBlob"]
        return {"wrapping": "kms", "kms_key_id": kms_key_id, "wrapped_key": base64.b64encode(blob).decode()}
    if not settings.backup_encryption_key:
        raise BadInput("this worker has no BACKUP_ENCRYPTION_KEY (nor BACKUP_KMS_KEY_ID); give the workers the key")
    master = base64.b64decode(settings.backup_encryption_key.get_secret_value())
    return {"wrapping": "key", "wrapped_key": wrap_key(key, master, backup_id), "master_key_id": master_key_id(master)}


def master_key_id(master: bytes) -> str:
    """Names a master key in manifests (a hash prefix: no secret)."""
    return hashlib.sha256(master).hexdigest()[:16]


KMS_KEY_UNUSABLE = ("DisabledException", "KMSInvalidStateException")  # what Decrypt answers for such a key


def kms_key_unusable(kms_key_id: str, backup_id: str, state: str) -> BadInput:
    return BadInput(f"KMS key {kms_key_id} of backup {backup_id} is not usable ({state}: disabled or pending "
                    f"deletion): enable it (aws kms enable-key --key-id {kms_key_id}, or cancel-key-deletion), "
                    "then run the command again")


def check_kms_key_enabled(settings: Settings, kms_key_id: str, backup_id: str) -> None:
    """BadInput naming the key when KMS says it is not Enabled (DescribeKey), before any Decrypt under it. A
    caller without kms:DescribeKey (or an unknown key) is left to Decrypt's own answer."""
    try:
        state = aws_client(settings, "kms").describe_key(KeyId=kms_key_id)["KeyMetadata"].get("KeyState")
    except ClientError:
        return
    if state and state != "Enabled":
        raise kms_key_unusable(kms_key_id, backup_id, state)


def data_key(settings: Settings, backup_id: str, encryption: dict[str, Any] | None) -> bytes | None:
    """Unwrap a backup's data key (cached per process)."""
    if not encryption:
        return None
    cache = (backup_id, encryption["wrapped_key"])
    if cache in _key_cache:
        return _key_cache[cache]
    if encryption["wrapping"] == "kms":
        check_kms_key_enabled(settings, str(encryption.get("kms_key_id")), backup_id)
        try:
            key = aws_client(settings, "kms").decrypt(
                CiphertextBlob=base64.b64decode(encryption["wrapped_key"]),
                EncryptionContext={"backup_id": backup_id})["Plaintext"]
        except ClientError as err:
            code = err.response.get("Error", {}).get("Code", "?")
            if code in KMS_KEY_UNUSABLE:
                raise kms_key_unusable(str(encryption.get("kms_key_id")), backup_id, code) from None
            raise
    else:
        if not settings.backup_encryption_key:
            raise BadInput("backup is encrypted with a key: set BACKUP_ENCRYPTION_KEY on the workers")
        key = unwrap_key(encryption["wrapped_key"],
                         base64.b64decode(settings.backup_encryption_key.get_secret_value()), backup_id)
    _key_cache[cache] = key
    return key


# manifest -------------------------------------------------------------------------------------------

def manifest_checksum(manifest: dict[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


# The manifest's MAC (issue 10 item 2). The unkeyed checksum above only catches accidents: anyone who can
# write to the store can recompute it. With a key configured, the manifest also carries
#     "auth": {"alg": "hmac-sha256", "key": "master", "key_id": <master_key_id>, "mac": <hex>}
#  or "auth": {"alg": "hmac-sha256", "key": "kms", "kms_key_id": <id>, "wrapped_key": <b64>, "mac": <hex>}
# where mac = HMAC-SHA256(K, canonical JSON of the whole manifest but `checksum` and `auth.mac`), so the
# chunk list, columns, table names, key ranges, options, encryption block and the auth block itself are all
# under it. K is derived with HKDF-SHA256 (its own `info`, so it is never the key that wraps data keys):
# - "master": from BACKUP_ENCRYPTION_KEY; verifying it needs no network call.
# - "kms": from a fresh 32-byte MAC key made by KMS GenerateDataKey under BACKUP_KMS_KEY_ID, with the
#   encryption context {backup_id, purpose: manifest-mac}, stored wrapped. Verifying unwraps it with
#   Decrypt *naming the configured key* (KeyId), so a key wrapped by any other KMS key is refused; only who
#   may GenerateDataKey/Encrypt under that key (who may make backups) can make a valid manifest.
#   KMS GenerateMac/VerifyMac (moto supports them) would need a second, HMAC-type KMS key to configure:
#   the backup key is a symmetric ENCRYPT_DECRYPT key, which KMS refuses for GenerateMac. The wrapped MAC
#   key is separate from the data key so that unencrypted backups are authenticated the same way.
# `backup list` checks "master" MACs (local, cheap) and leaves "kms" ones unchecked (no KMS call per backup);
# validate and restore check every MAC, in the CLI and again on the workers.

MAC_ALG = "hmac-sha256"
MAC_INFO = b"worktask-data manifest mac v1"
_mac_key_cache: dict[tuple[str, str, str], bytes] = {}


def _mac_context(backup_id: str) -> dict[str, str]:
    return {"backup_id": backup_id, "purpose": "manifest-mac"}


def _canonical(manifest: dict[str, Any]) -> bytes:
    body = {k: v for k, v in manifest.items() if k != "checksum"}
    if isinstance(body.get("auth"), dict):
        body["auth"] = {k: v for k, v in body["auth"].items() if k != "mac"}
    body = json.loads(json.dumps(body, default=str))  # as stored (write_manifest), whatever the types in memory
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _mac(secret: bytes, manifest: dict[str, Any]) -> HMAC:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=MAC_INFO).derive(secret)
    mac = HMAC(key, hashes.SHA256())
    mac.update(_canonical(manifest))
    return mac


def kms_key_for(settings: Settings, options: dict[str, Any]) -> str | None:
    """The KMS key of this installation: the submitting CLI's (in the job options) or the worker's own."""
    return options.get("kms_key_id") or settings.backup_kms_key_id


def has_key(settings: Settings, options: dict[str, Any]) -> bool:
    return bool(settings.backup_encryption_key or kms_key_for(settings, options))


def auth_options(settings: Settings, allow_unauthenticated: bool) -> dict[str, Any]:
    """What a validate or restore job's workers need to verify the manifest again (no secret). Only the
    operator's own flag travels: whether a key is configured is decided by each side with its own keys, so
    a CLI that has no key (the workers do) cannot waive the workers' check of a manifest without a MAC."""
    return {"kms_key_id": settings.backup_kms_key_id, "allow_unauthenticated": bool(allow_unauthenticated)}


def sign_manifest(settings: Settings, options: dict[str, Any], manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest with its `auth` block; unchanged (no MAC) where no key is configured."""
    body = {k: v for k, v in manifest.items() if k not in ("checksum", "auth")}
    kms_key_id = kms_key_for(settings, options)
    if kms_key_id:  # as make_data_key: KMS when configured
        out = aws_client(settings, "kms").generate_data_key(
            KeyId=kms_key_id, KeySpec="AES_256", EncryptionContext=_mac_context(body["backup_id"]))
        secret = out["Plaintext"]
        auth = {"alg": MAC_ALG, "key": "kms", "kms_key_id": kms_key_id,
                "wrapped_key": base64.b64encode(out["CiphertextBlob"]).decode()}
    elif settings.backup_encryption_key:
        secret = base64.b64decode(settings.backup_encryption_key.get_secret_value())
        auth = {"alg": MAC_ALG, "key": "master", "key_id": master_key_id(secret)}
    else:
        return body
    signed = {**body, "auth": auth}
    auth["mac"] = _mac(secret, signed).finalize().hex()
    return signed


def _kms_mac_key(settings: Settings, kms_key_id: str, backup_id: str, auth: dict[str, Any]) -> bytes:
    cache = (backup_id, kms_key_id, str(auth.get("wrapped_key")))
    if cache in _mac_key_cache:
        return _mac_key_cache[cache]
    check_kms_key_enabled(settings, kms_key_id, backup_id)
    try:
        blob = base64.b64decode(auth["wrapped_key"], validate=True)
        key = aws_client(settings, "kms").decrypt(CiphertextBlob=blob, KeyId=kms_key_id,
                                                  EncryptionContext=_mac_context(backup_id))["Plaintext"]
    except (KeyError, TypeError, ValueError, binascii.Error):
        raise BadInput(f"manifest of backup {backup_id} has a malformed MAC key: it was altered; "
                       "do not restore it, pick another backup (worktask backup list)") from None
    except ClientError as err:
        code = err.response.get("Error", {}).get("Code", "?")
        if code in KMS_KEY_UNUSABLE:
            raise kms_key_unusable(kms_key_id, backup_id, code) from None
        if code in ("AccessDeniedException", "InvalidCiphertextException", "IncorrectKeyException",
                    "NotFoundException", "InvalidKeyUsageException"):
            raise BadInput(f"the MAC key in the manifest of backup {backup_id} does not unwrap under "
                           f"BACKUP_KMS_KEY_ID={kms_key_id} ({code}): set the KMS key the backup was made with "
                           "(the manifest names it), or the manifest was altered") from None
        raise
    _mac_key_cache[cache] = key
    return key


def verify_manifest(settings: Settings, options: dict[str, Any], manifest: dict[str, Any],
                    allow_unauthenticated: bool = False, network: bool = True) -> bool | None:
    """Check the manifest's MAC: True when it verifies; False when there is none and that is accepted (no key
    here, or allow_unauthenticated); None when it cannot be checked here and that is accepted (made with a key
    this installation lacks, or a KMS MAC with network=False). BadInput, one line naming the fix, otherwise;
    a MAC that fails is refused whatever allow_unauthenticated says."""
    backup_id = manifest.get("backup_id")
    auth = manifest.get("auth")
    refuse = has_key(settings, options) and not allow_unauthenticated
    if auth is None:
        if refuse:
            raise BadInput(f"manifest of backup {backup_id} carries no MAC (made without a key, by an older "
                           "version, or forged) and this installation has a key: pass --allow-unauthenticated "
                           "only if you trust this backup")
        return False
    if not isinstance(auth, dict) or auth.get("alg") != MAC_ALG or not isinstance(auth.get("mac"), str):
        raise BadInput(f"manifest of backup {backup_id} has an authentication block this version does not know: "
                       "it was altered, or upgrade worktask")
    secret, why = None, ""
    if auth.get("key") == "master":
        if settings.backup_encryption_key:
            master = base64.b64decode(settings.backup_encryption_key.get_secret_value())
            if master_key_id(master) == auth.get("key_id"):
                secret = master
            else:
                why = f"made with key {auth.get('key_id')}, BACKUP_ENCRYPTION_KEY here is {master_key_id(master)}"
        else:
            why = f"made with BACKUP_ENCRYPTION_KEY {auth.get('key_id')}, which is not set here"
    elif auth.get("key") == "kms":
        kms_key_id = kms_key_for(settings, options)
        if kms_key_id and not network:
            return None
        if kms_key_id:
            secret = _kms_mac_key(settings, kms_key_id, str(backup_id), auth)
        else:
            why = f"made with KMS key {auth.get('kms_key_id')}, BACKUP_KMS_KEY_ID is not set here"
    else:
        raise BadInput(f"manifest of backup {backup_id} names no known MAC key: it was altered, or upgrade worktask")
    if secret is None:
        if refuse:
            raise BadInput(f"manifest of backup {backup_id} cannot be authenticated here ({why}): set the key "
                           "it was made with, or pass --allow-unauthenticated only if you trust this backup")
        return None
    try:
        _mac(secret, manifest).verify(bytes.fromhex(auth["mac"]))
    except (InvalidSignature, ValueError):
        raise BadInput(f"manifest of backup {backup_id} fails its MAC: it was altered or forged; do not restore "
                       "it, pick another backup (worktask backup list)") from None
    return True


def write_manifest(store: ObjectStore, options: dict[str, Any], manifest: dict[str, Any],
                   sign_with: Settings | None = None) -> str:
    """Store the manifest with its checksum; with `sign_with`, the settings' key also MACs it (sign_manifest)."""
    if sign_with is not None:
        manifest = sign_manifest(sign_with, options, manifest)
    key = prefix(options, manifest["backup_id"]) + "manifest.json"
    store.put(key, encode_manifest(manifest))
    return key


def encode_manifest(manifest: dict[str, Any]) -> bytes:
    """The manifest as stored: with its checksum, as JSON (one PUT of these bytes replaces it whole)."""
    return json.dumps({**manifest, "checksum": manifest_checksum(manifest)}, indent=1, default=str).encode()


def read_manifest(store: ObjectStore, options: dict[str, Any], backup_id: str, settings: Settings | None = None,
                  allow_unauthenticated: bool = False, any_format: bool = False) -> dict[str, Any]:
    """The manifest of a backup, checked: its format version (one this build reads), its checksum, its id, with
    `settings` its MAC (verify_manifest), then its shape (worker/manifest.py). Without settings no MAC: for
    looking at a manifest, never before acting on one. `any_format` (listing only) skips the version and the
    shape. Every check is on the dict as stored, and that very dict is returned (never a re-serialised model:
    the checksum and MAC are over its bytes)."""
    check_backup_id(backup_id)
    key = prefix(options, backup_id) + "manifest.json"
    try:
        manifest = json.loads(store.get(key))
    except FileNotFoundError:
        raise BadInput(f"backup {backup_id} not found in {store.url(options['prefix'])} (no manifest); "
                       "see worktask backup list") from None
    except ValueError:
        raise BadInput(f"manifest of backup {backup_id} is not JSON: it was altered; pick another backup "
                       "(worktask backup list)") from None
    if not isinstance(manifest, dict):
        raise BadInput(f"manifest of backup {backup_id} fails its checksum: it was altered")
    if not any_format:
        check_format(manifest, backup_id)
    if manifest.get("checksum") != manifest_checksum(manifest):
        raise BadInput(f"manifest of backup {backup_id} fails its checksum: it was altered")
    if manifest.get("backup_id") != backup_id:
        raise BadInput(f"the manifest under backup {backup_id} is that of {manifest.get('backup_id')!r}: it was "
                       "moved or altered; pick another backup (worktask backup list)")
    if settings is not None:
        verify_manifest(settings, options, manifest, allow_unauthenticated)
    if not any_format:
        validate(manifest, backup_id)
    return manifest


# listing --------------------------------------------------------------------------------------

def list_backups(store: ObjectStore, options: dict[str, Any], settings: Settings | None = None) -> list[dict[str, Any]]:
    """Every backup id under the prefix, newest first, with its state and totals. With settings, a manifest
    whose MAC fails is `failed`; `authenticated` is True (MAC verified), False (none, or it fails) or None
    (not checked: no settings, a key this installation lacks, or a KMS MAC, left to validate and restore so
    that listing makes no KMS call per backup). `validated` and `verified` are None (never validated / never
    drilled) or {ok, at} of the marker (worker/markers.py), read only where the listing shows one (a GET each)."""
    root = options["prefix"] + "/"
    seen: dict[str, dict[str, Any]] = {}
    for obj in store.list(root):
        backup_id = obj.key[len(root):].split("/", 1)[0]
        if not ID_RE.fullmatch(backup_id):
            continue
        entry = seen.setdefault(backup_id, {"objects": 0, "bytes": 0, "manifest": False, "failed": False,
                                            "last_write": obj.modified, "markers": set()})
        entry["objects"] += 1
        entry["bytes"] += obj.size
        entry["last_write"] = max(entry["last_write"], obj.modified)
        entry["manifest"] |= obj.key.endswith("/manifest.json")
        entry["failed"] |= obj.key.endswith("/failed.json")
        name = obj.key.rsplit("/", 1)[-1]
        if name in markers.NAMES and obj.key == f"{root}{backup_id}/{name}":
            entry["markers"].add(name)
    out = []
    for backup_id, e in seen.items():
        row: dict[str, Any] = {"backup_id": backup_id, "created_at": created_at(backup_id).isoformat(),
                               "state": "incomplete", "tables": 0, "rows": 0, "bytes_stored": e["bytes"],
                               "encrypted": None, "compressed": None, "duration_s": None, "authenticated": None,
                               "last_write": e["last_write"].isoformat(), "validated": None, "verified": None}
        for field, name in (("validated", markers.VALIDATED), ("verified", markers.VERIFIED)):
            if name in e["markers"]:
                marker = markers.read(store, options, backup_id, name)
                row[field] = {"ok": marker["ok"] is True, "at": marker["at"]} if marker else None
        if e["manifest"]:
            try:
                m = read_manifest(store, options, backup_id, any_format=True)  # as before: a newer format is
                # not turned into a `failed` backup (that retention would delete)
                if settings is not None:
                    row["authenticated"] = verify_manifest(settings, options, m, allow_unauthenticated=True,
                                                           network=False)
                row.update(state="complete", tables=len(m["tables"]), rows=m["totals"]["rows"],
                           bytes_stored=m["totals"]["bytes_stored"], encrypted=m["options"]["encrypt"],
                           compressed=m["options"]["compress"], duration_s=m["duration_s"])
            except BadInput:
                row.update(state="failed", authenticated=False)
        elif e["failed"]:
            row["state"] = "failed"
        out.append(row)
    return sorted(out, key=lambda r: r["backup_id"], reverse=True)
