from django.apps import AppConfig
from django.core import checks
from django.core.exceptions import ImproperlyConfigured


class GalleryConfig(AppConfig):
    name = "gallery"
    verbose_name = "Catalog"

    def ready(self) -> None:
        from django.db.models.signals import post_delete

        from gallery.cards import deletion_numbered  # models are loaded only once the registry is ready

        checks.register(_experiment_settings_check)
        post_delete.connect(deletion_numbered, sender="gallery.Product", dispatch_uid="gallery-deletion-numbered")


def _experiment_settings_check(app_configs, **kwargs) -> list[checks.CheckMessage]:
    """REFINE_EXPERIMENT is well formed (manage.py check, migrate and serve say so before any grid fails)."""
    # Imported when the check runs: apps.py loads before the app registry is ready (gallery.experiments needs models).
    from gallery.experiments import experiment_arms

    try:
        experiment_arms()
    except ImproperlyConfigured as exc:
        return [checks.Error(str(exc), id="gallery.E001")]
    return []
