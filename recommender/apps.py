from django.apps import AppConfig
from django.core import checks
from django.core.exceptions import ImproperlyConfigured


class RecommenderConfig(AppConfig):
    name = "recommender"
    verbose_name = "Visual similarity"

    def ready(self) -> None:
        checks.register(_refine_settings_check)


def _refine_settings_check(app_configs, **kwargs) -> list[checks.CheckMessage]:
    """REFINE_STRATEGY names a strategy (manage.py check, migrate and serve say so before any click fails)."""
    # Imported when the check runs: apps.py loads before the app registry is ready (recommender.refine needs models).
    from recommender.refine import strategy_served

    try:
        strategy_served()
    except ImproperlyConfigured as exc:
        return [checks.Error(str(exc), id="recommender.E001")]
    return []
