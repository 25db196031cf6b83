from django.apps import AppConfig


class LabConfig(AppConfig):
    """The lab: demo catalog, quality harness, head training. Commands only, never a request path."""

    name = "lab"
    verbose_name = "Lab"
