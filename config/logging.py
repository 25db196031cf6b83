"""Log lines that trace a request: one JSON object per line, with the request id and the task id.

The web process sets the request id for the time of a request
(``gallery.middleware.RequestId``); every task a request queues carries it in
its message headers (``on_before_task_publish``), and the worker sets it again,
with the task's id, for the time of the task (``on_task_prerun``). Every log
line written meanwhile, by any logger, carries both (``ContextFilter``).
"""

from __future__ import annotations

import contextvars
import json
import logging
from datetime import UTC, datetime

# The Celery message header that carries the request id into the tasks a request queues.
REQUEST_ID_HEADER = "gallery_request_id"

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
task_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("task_id", default=None)
task_name_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("task_name", default=None)


class ContextFilter(logging.Filter):
    """Puts the current request id, task id and task name on every record (None outside a request or task)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        record.task_id = task_id_var.get()
        record.task_name = task_name_var.get()
        parts = [f"{name}={value}" for name in ("request_id", "task_id") if (value := getattr(record, name))]
        record.context = f" [{' '.join(parts)}]" if parts else ""
        return True


# What every LogRecord has; anything else on a record was passed in ``extra=`` and is written as a field.
_RECORD_ATTRIBUTES = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "context"}
_CONTEXT_FIELDS = ("request_id", "task_id", "task_name")


class JsonFormatter(logging.Formatter):
    """time, level, logger, message, process, the request and task ids when set, and the ``extra=`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
        }
        for name in _CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value:
                entry[name] = value
        for name, value in record.__dict__.items():
            if name not in _RECORD_ATTRIBUTES and name not in _CONTEXT_FIELDS:
                entry[name] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


# --- Celery: the request id travels with the task, the task id with its lines -------------------------------


def on_before_task_publish(headers: dict | None = None, **_kwargs) -> None:  # noqa: ANN001
    """Celery's before_task_publish: a task queued during a request (or a task) carries its request id."""
    request_id = request_id_var.get()
    if request_id and headers is not None and REQUEST_ID_HEADER not in headers:
        headers[REQUEST_ID_HEADER] = request_id


# The context each running task replaced, by task id: a task run in place (``apply()``, eager mode) hands
# back the request's own context when it ends.
_before_task: dict[str, tuple[contextvars.Token, ...]] = {}


def on_task_prerun(task_id=None, task=None, **_kwargs) -> None:  # noqa: ANN001
    """Celery's task_prerun: the task's lines carry its id, its name and the request id it was queued by."""
    request = getattr(task, "request", None)
    _before_task[task_id] = (
        task_id_var.set(task_id),
        task_name_var.set(getattr(task, "name", None)),
        # A task run in place, in a request, keeps that request's id.
        request_id_var.set(getattr(request, REQUEST_ID_HEADER, None) or request_id_var.get()),
    )


def on_task_postrun(task_id=None, **_kwargs) -> None:  # noqa: ANN001
    """Celery's task_postrun: lines written after the task belong to whatever ran before it (in a worker: none)."""
    tokens = _before_task.pop(task_id, None)
    if tokens is None:
        return
    for var, token in zip((task_id_var, task_name_var, request_id_var), tokens, strict=True):
        try:
            var.reset(token)
        except ValueError:  # set in another context (a thread the pool switched): clear instead
            var.set(None)
