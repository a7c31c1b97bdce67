"""Celery tasks, one module per job family: plain functions first, thin tasks after."""
