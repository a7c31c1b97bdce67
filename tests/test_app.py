"""The Celery app's contract (DESIGN §3, §12): JSON only, acks late, bounded limits, routing by name."""

from __future__ import annotations

from worker.app import celery_config, route_task
from worker.settings import Settings


def test_app_is_json_only_acks_late_and_bounded() -> None:
    conf = celery_config(Settings(_env_file=None))
    assert conf["accept_content"] == ["json"] and conf["task_serializer"] == "json"
    assert conf["result_accept_content"] == ["json"] and conf["result_serializer"] == "json"
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["worker_deduplicate_successful_tasks"]
    limit = conf["task_time_limit"]
    assert 0 < conf["task_soft_time_limit"] < limit
    for key in ("broker_transport_options", "result_backend_transport_options"):
        assert conf[key]["visibility_timeout"] > limit


def test_coordinators_route_to_control_and_chunks_to_bulk() -> None:
    assert route_task("worktask.backup.start", (), {}, {})["queue"] == "control"
    assert route_task("worktask.backup.finalize", (), {}, {})["queue"] == "control"
    assert route_task("worktask.backup.dump_chunk", (), {}, {})["queue"] == "bulk"
    assert route_task("worktask.health.check", (), {}, {})["queue"] == "bulk"


def test_tasks_register_under_their_names() -> None:
    from worker.app import app

    app.loader.import_default_modules()
    names = set(app.tasks)
    assert {"worktask.health.start", "worktask.health.check", "worktask.health.finalize"} <= names
