# The gallery's image: one image for web, worker and beat (the command differs).
# Built on a machine with internet; the torch wheels are large (CUDA build).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    GALLERY_ENV=production GALLERY_VAR_DIR=/data DJANGO_SETTINGS_MODULE=config.settings \
    PROMETHEUS_MULTIPROC_DIR=/tmp/gallery-metrics

RUN apt-get update && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY requirements.txt .
RUN pip install -r requirements.txt
COPY . .
# Static files are collected at build time and served by WhiteNoise.
# A throwaway key: production settings refuse short or placeholder keys.
RUN SECRET_KEY="$(python -c 'import secrets; print(secrets.token_urlsafe(50))')" ALLOWED_HOSTS=localhost \
    REDIS_URL=redis://localhost:6379/0 python manage.py collectstatic --noinput -v0

RUN useradd --create-home gallery && mkdir -p /data && chown gallery /data
USER gallery
VOLUME ["/data"]
EXPOSE 8000
CMD ["gunicorn", "config.wsgi", "--bind", "0.0.0.0:8000", "--workers", "3", "--threads", "4", "--limit-request-line", "8190", "--access-logfile", "-"]
