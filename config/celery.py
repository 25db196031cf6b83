"""The Celery app: `celery -A config worker` starts a worker."""

import os

from celery import Celery, signals

from config import logging as log_context

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("gallery")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


# Log context (the request id a task was queued by, the task id) and task outcomes (for /metrics), in every
# process that publishes or runs tasks: this module is what each of them imports to reach Celery. The metrics
# module is imported on the first outcome, not here: this runs while the settings package is still loading,
# before they choose prometheus-client's multiprocess mode.
@signals.task_postrun.connect(weak=False)
def _task_outcome(**kwargs) -> None:
    from config.metrics import on_task_postrun

    on_task_postrun(**kwargs)


@signals.task_revoked.connect(weak=False)
def _task_revoked(**kwargs) -> None:
    from config.metrics import on_task_revoked

    on_task_revoked(**kwargs)


signals.before_task_publish.connect(log_context.on_before_task_publish, weak=False)
signals.task_prerun.connect(log_context.on_task_prerun, weak=False)
signals.task_postrun.connect(log_context.on_task_postrun, weak=False)
