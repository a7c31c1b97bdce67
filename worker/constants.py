"""Names shared by the CLI, the Celery app and the tasks: queues, task names, Redis keys."""

QUEUE_CONTROL = "control"  # planning, coordinating, finalising
QUEUE_BULK = "bulk"  # per-table, per-chunk work

# Task names are worktask.<family>.<step>. Coordinators go to `control`, the rest to `bulk`.
CONTROL_STEPS = ("start", "finalize", "fail", "after_verify", "advance")
TASK_MODULES = ["tasks.health", "tasks.migrate", "tasks.seed", "tasks.backup", "tasks.verify",
                "tasks.restore", "tasks.drill", "tasks.testdata", "tasks.validate", "tasks.init", "tasks.maintenance"]

TASK_HEALTH_START = "worktask.health.start"
TASK_HEALTH_CHECK = "worktask.health.check"
TASK_HEALTH_FINALIZE = "worktask.health.finalize"
TASK_MIGRATE_START = "worktask.migrate.start"
TASK_SEED_START = "worktask.seed.start"
TASK_SEED_SET = "worktask.seed.seed_set"
TASK_SEED_FINALIZE = "worktask.seed.finalize"
TASK_BACKUP_START = "worktask.backup.start"
TASK_BACKUP_DUMP_PG = "worktask.backup.dump_chunk"
TASK_BACKUP_DUMP_DYNAMO = "worktask.backup.dump_segment"
TASK_BACKUP_FINALIZE = "worktask.backup.finalize"
# `backup validate` (TASK_VALIDATE_DATA_* are `worktask validate`); the names were TASK_VALIDATE_*, the task
# names themselves are unchanged, so nothing queued or shown in Flower changes.
TASK_BACKUP_VALIDATE_START = "worktask.backup_validate.start"
TASK_BACKUP_VALIDATE_CHUNK = "worktask.backup_validate.check_chunk"
TASK_BACKUP_VALIDATE_FINALIZE = "worktask.backup_validate.finalize"
TASK_CLEANUP_START = "worktask.backup_cleanup.start"
# the restore drill (`backup verify --restore-test`, kind backup_verify; advance is the restore's parent hook)
TASK_DRILL_START = "worktask.backup_verify.start"
TASK_DRILL_ADVANCE = "worktask.backup_verify.advance"
TASK_RESTORE_START = "worktask.restore.start"
TASK_RESTORE_VERIFY = "worktask.restore.verify_chunk"
TASK_RESTORE_AFTER_VERIFY = "worktask.restore.after_verify"
TASK_RESTORE_LOAD = "worktask.restore.load_chunk"
TASK_RESTORE_BUILD = "worktask.restore.build_table"
TASK_RESTORE_FINALIZE = "worktask.restore.finalize"
TASK_TESTDATA_START = "worktask.testdata.start"
TASK_TESTDATA_CHUNK = "worktask.testdata.generate_chunk"
TASK_TESTDATA_CLEAN = "worktask.testdata.cleanup_chunk"
TASK_TESTDATA_FINALIZE = "worktask.testdata.finalize"
TASK_VALIDATE_DATA_START = "worktask.validate.start"
TASK_VALIDATE_DATA_CHECK = "worktask.validate.check"
TASK_VALIDATE_DATA_FINALIZE = "worktask.validate.finalize"
# pipelines (worker/pipeline.py): a start, and an advance sent when a step's job ends (<kind>.advance)
TASK_INIT_START = "worktask.init.start"
TASK_INIT_ADVANCE = "worktask.init.advance"
TASK_MAINTENANCE_START = "worktask.maintenance.start"
TASK_MAINTENANCE_ADVANCE = "worktask.maintenance.advance"
TASK_OPTIMIZE_START = "worktask.optimize.start"  # maintenance's optimize step: a job of its own (VACUUM (ANALYZE))

# Redis keys (all under one prefix so that an operator can find them).
KEY_PREFIX = "worktask:"
# a job's own keys (worktask:job:<id>…) are named by worker/jobs.py alone
LAST_VALIDATION_KEY = KEY_PREFIX + "validation:last"  # the last `worktask validate` report
DYNAMO_SCAN_RESTORE_KEY = KEY_PREFIX + "restore:dynamo_scan"  # items a scan-window restore may hold early (validate)
BEAT_SLOT_KEY = KEY_PREFIX + "beat:{name}:{slot}"  # SET NX per schedule slot: one run per slot
JOB_TTL_SECONDS = 14 * 24 * 3600
RETENTION_DAYS_MAX = 36_500  # the one bound of RETENTION_DAYS and --retention-days (worker/settings.py's too)

# Job and backup ids: sortable, [0-9A-Za-z-] only.
ID_PATTERN = r"[0-9A-Za-z][0-9A-Za-z-]{0,79}"  # matched whole (re.fullmatch: no trailing newline)

# The nightly cycle (beat_schedule.py). Maintenance's task lives in its own family (tasks/maintenance.py).
TASK_MAINTENANCE_START = "worktask.maintenance.start"
