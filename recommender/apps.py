from django.apps import AppConfig
from django.core import checks


class RecommenderConfig(AppConfig):
    name = "recommender"
    verbose_name = "Visual similarity"

    def ready(self) -> None:
        checks.register(_refine_settings_check)


def _refine_settings_check(app_configs, **kwargs) -> list[checks.CheckMessage]:
    """REFINE_STRATEGY names a strategy (manage.py check, migrate and serve say so before any click fails)."""
    from django.core.exceptions import ImproperlyConfigured

    from recommender.refine import strategy_served

    try:
        strategy_served()
    except ImproperlyConfigured as exc:
        return [checks.Error(str(exc), id="recommender.E001")]
    return []
