from django.apps import AppConfig
from django.core import checks
from django.core.exceptions import ImproperlyConfigured


class GalleryConfig(AppConfig):
    name = "gallery"
    verbose_name = "Catalog"

    def ready(self) -> None:
        checks.register(_experiment_settings_check)


def _experiment_settings_check(app_configs, **kwargs) -> list[checks.CheckMessage]:
    """REFINE_EXPERIMENT is well formed (manage.py check, migrate and serve say so before any grid fails)."""
    # Imported when the check runs: apps.py loads before the app registry is ready (gallery.experiments needs models).
    from gallery.experiments import experiment_arms

    try:
        experiment_arms()
    except ImproperlyConfigured as exc:
        return [checks.Error(str(exc), id="gallery.E001")]
    return []
