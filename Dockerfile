# Delineo: one image for the web process (default CMD) and the Celery worker. It runs with
# DJANGO_ENV=production: SECRET_KEY and ALLOWED_HOSTS are required, and it expects a reverse
# proxy with HTTPS in front (BEHIND_TLS_PROXY=true; docs/security.md).
#   web:    docker run -p 127.0.0.1:8000:8000 -v delineo-data:/data --env-file delineo.env delineo
#   worker: docker run -v delineo-data:/data --env-file delineo.env delineo celery -A webapp worker -c 1 -l info
#   DICOM node: docker run -p 11112:11112 -v delineo-data:/data --env-file delineo.env delineo python manage.py dicom_node
#     (listens on all addresses inside the container; publish the port to the hospital network
#     only, docs/dicom-networking.md "Security")
# Web and worker share /data (patient data, and the embedded SQLite database and broker
# unless DATABASE_URL / CELERY_BROKER_URL point at PostgreSQL and Redis; docs/deployment.md).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DJANGO_ENV=production \
    MEDIA_ROOT=/data/media \
    DATABASE_URL=sqlite:////data/db.sqlite3 \
    CELERY_BROKER_URL=sqla+sqlite:////data/celery-broker.sqlite3 \
    STATIC_ROOT=/app/var/static \
    DICOM_NODE_HOST=0.0.0.0 \
    DICOM_NODE_PORT=11112

WORKDIR /app

# libgomp1: OpenMP runtime used by PyTorch and scikit-image on the CPU; elastix: the
# classical registration methods of contour propagation (docs/registration.md).
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 elastix \
    && rm -rf /var/lib/apt/lists/*

# PyTorch from the CPU wheel index first (no CUDA libraries), then the rest; pip sees
# torch==<pinned> already satisfied.
COPY requirements.txt .
RUN TORCH_VERSION="$(grep -E '^torch==' requirements.txt | cut -d= -f3)" \
    && pip install --index-url https://download.pytorch.org/whl/cpu "torch==${TORCH_VERSION}" \
    && pip install -r requirements.txt

COPY . .

RUN useradd --create-home --uid 1000 delineo \
    && mkdir -p /data/media /app/var \
    && DJANGO_ENV=development DEBUG=false SECRET_KEY=collectstatic-only python manage.py collectstatic --noinput \
    && chown -R delineo:delineo /data /app/var
USER delineo

VOLUME ["/data"]
EXPOSE 8000 11112

# Web. Run `python manage.py migrate` (and `ensure_local_account`) once before, e.g. as a
# one-off container. Worker: override the command with `celery -A webapp worker -c 1 -l info`.
CMD ["gunicorn", "webapp.wsgi:application", "--bind", "0.0.0.0:8000", "--workers", "2", "--timeout", "300", "--access-logfile", "-"]
