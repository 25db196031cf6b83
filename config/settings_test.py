"""Test settings: the environment-driven settings with test defaults.

Tests use the Redis at 127.0.0.1:6379 on its own database number (flushed by
the tests), the EfficientNet-Lite0 encoder (its weights ship with the package,
so results are the same on every machine) and throwaway directories.
"""

import os
import tempfile

os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/13")
os.environ.setdefault("ENCODER", "efficientnet-lite0")
os.environ.setdefault("GALLERY_VAR_DIR", tempfile.mkdtemp(prefix="gallery-test-"))
os.environ.setdefault("CACHE_KEY_PREFIX", "gallery-test")

from config.settings import *  # noqa: E402, F403

# pytest-django names the test database; a file (not :memory:) so that worker
# processes started by the tests share it.
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":  # noqa: F405
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test.sqlite3")}  # noqa: F405
elif os.environ.get("TEST_DATABASE_NAME"):
    # Two suites on one PostgreSQL server side by side each name their own.
    DATABASES["default"]["TEST"] = {"NAME": os.environ["TEST_DATABASE_NAME"]}  # noqa: F405
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
