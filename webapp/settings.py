"""Django settings for Delineo, read from environment variables (see docs/deployment.md).

Embedded defaults give a one-machine setup that needs no server: SQLite at
``var/db.sqlite3`` and a Celery broker in ``var/celery-broker.sqlite3`` (kombu's
SQLAlchemy transport). At scale set ``DATABASE_URL`` (PostgreSQL) and
``CELERY_BROKER_URL`` (Redis); the code is the same.
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url
import plotly
from django.core.exceptions import ImproperlyConfigured

from webapp.env import check_production, env_bool, env_bytes, env_choice, env_int, env_list, env_rate, env_str

# Patient data on disk is readable by the service user and its group only: every file this
# process creates (uploads, job outputs, the SQLite files) is at most 640, every folder at
# most 750, whatever the shell's umask (docs/security.md, "Patient data on disk"). The
# database file, which holds API tokens, is made 600 when it is opened (apps.py).
os.umask(0o027)

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"

_DEV_SECRET_KEY = "dev-only-insecure-secret-key-change-me-in-production"

# "development" (the default, what `make run` uses) or "production": a server other people
# can reach, which refuses to start with DEBUG, a weak SECRET_KEY or no ALLOWED_HOSTS, and
# turns on HTTPS-only cookies, HSTS and the redirect to HTTPS (docs/security.md).
DJANGO_ENV = env_choice("DJANGO_ENV", "development", ("development", "production"))
PRODUCTION = DJANGO_ENV == "production"

DEBUG = env_bool("DEBUG", not PRODUCTION)
SECRET_KEY = env_str("SECRET_KEY", _DEV_SECRET_KEY)
if not PRODUCTION and not DEBUG and SECRET_KEY == _DEV_SECRET_KEY:
    raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is false")
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"] if DEBUG else [])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

# --- Security -------------------------------------------------------------------------
# Cookies over HTTPS only whenever DEBUG is off (always in production, see below).
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", not DEBUG)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", not DEBUG)
SESSION_COOKIE_AGE = env_int("SESSION_COOKIE_AGE", 12 * 3600, minimum=60)
# Behind a reverse proxy that terminates TLS: trust its X-Forwarded-Proto header (the
# proxy must set it on every request, overwriting what the client sent).
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if env_bool("BEHIND_TLS_PROXY", False) else None
# Production: plain-HTTP requests are redirected to HTTPS (turn off when the proxy does
# it), and browsers are told to use only HTTPS for a year (HSTS, sent on HTTPS responses).
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", PRODUCTION)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 365 * 24 * 3600 if PRODUCTION else 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", PRODUCTION)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", PRODUCTION)
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
if PRODUCTION:
    check_production(
        debug=DEBUG,
        secret_key=SECRET_KEY,
        insecure_keys={_DEV_SECRET_KEY},
        allowed_hosts=ALLOWED_HOSTS,
        session_cookie_secure=SESSION_COOKIE_SECURE,
        csrf_cookie_secure=CSRF_COOKIE_SECURE,
    )

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "webapp.delineation",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

# Static files are served by WhiteNoise, with DEBUG on too: `make run` serves with gunicorn.
MIDDLEWARE.insert(1, "whitenoise.middleware.WhiteNoiseMiddleware")
WHITENOISE_USE_FINDERS = True  # also works before collectstatic

ROOT_URLCONF = "webapp.urls"
WSGI_APPLICATION = "webapp.wsgi.application"

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
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------
_DEFAULT_DATABASE_URL = f"sqlite:///{VAR_DIR / 'db.sqlite3'}"
DATABASE_URL = env_str("DATABASE_URL", _DEFAULT_DATABASE_URL)
try:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=env_int("DB_CONN_MAX_AGE", 0, minimum=0))}
except ValueError as exc:  # dj-database-url raises ValueError for unknown schemes
    raise ImproperlyConfigured(f"DATABASE_URL={DATABASE_URL!r} is not a usable database URL: {exc}") from None
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The web server's threads and a worker share the file (docs/deployment.md, "SQLite"):
    # - WAL: readers never wait for the writer, nor the writer for readers;
    # - IMMEDIATE: a transaction takes the write lock when it begins, so two transactions
    #   that read then write wait for each other (the busy timeout) instead of one failing
    #   at once with "database is locked" (SQLite's answer to a read lock it cannot upgrade);
    # - a busy timeout of 30 s for the write lock.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        timeout=30,
        transaction_mode="IMMEDIATE",
        init_command="PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL",
    )
    if DATABASE_URL == _DEFAULT_DATABASE_URL:
        VAR_DIR.mkdir(exist_ok=True)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "job-list"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

# --- Static files and patient data ----------------------------------------------------
STATIC_URL = "static/"
# plotly.js comes from the pinned plotly package (served under static/vendor/), not a CDN
# and not a copy in git.
STATICFILES_DIRS = [BASE_DIR / "static", ("vendor", Path(plotly.__file__).parent / "package_data")]
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(VAR_DIR / "static")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# Patient data (uploads and results). Never served as static files: every download
# goes through an authenticated view that checks ownership.
MEDIA_ROOT = Path(env_str("MEDIA_ROOT", str(VAR_DIR / "media"))).resolve()

# --- Uploads (docs/security.md, "Upload limits") ----------------------------------------
# Total size of one upload (all files of a scan), e.g. "2G"; counted while the request
# streams in, which stops at the limit (UploadLimitHandler below).
DELINEO_MAX_UPLOAD_BYTES = env_bytes("DELINEO_MAX_UPLOAD_BYTES", 2 << 30)
# Number of files in one folder upload (a CT series has one file per slice).
DELINEO_MAX_UPLOAD_FILES = env_int("DELINEO_MAX_UPLOAD_FILES", 5000, minimum=1)
# A zip upload: most entries, total unpacked size, and unpacked size / compressed size
# (zip bombs reach about 1000; CT and MR series about 2 to 10).
DELINEO_ZIP_MAX_ENTRIES = env_int("DELINEO_ZIP_MAX_ENTRIES", 10000, minimum=1)
DELINEO_ZIP_MAX_UNPACKED_BYTES = env_bytes("DELINEO_ZIP_MAX_UNPACKED_BYTES", 8 * DELINEO_MAX_UPLOAD_BYTES)
DELINEO_ZIP_MAX_RATIO = env_int("DELINEO_ZIP_MAX_RATIO", 100, minimum=1)
# A .nii.gz upload: its gzip stream is unpacked piece by piece and counted before the
# image is read; refused above this size, or above this ratio to its compressed size.
DELINEO_GZIP_MAX_UNPACKED_BYTES = env_bytes("DELINEO_GZIP_MAX_UNPACKED_BYTES", DELINEO_MAX_UPLOAD_BYTES)
DELINEO_GZIP_MAX_RATIO = env_int("DELINEO_GZIP_MAX_RATIO", 100, minimum=1)
# Uploads one web-server process stores and checks at once (a check may read a whole volume
# into memory), and seconds another waits for its turn before it is answered 503.
DELINEO_UPLOAD_CHECKS_AT_ONCE = env_int("DELINEO_UPLOAD_CHECKS_AT_ONCE", 2, minimum=1)
DELINEO_UPLOAD_CHECK_WAIT = env_int("DELINEO_UPLOAD_CHECK_WAIT", 300, minimum=0)
# Read the volume at upload time so a series that cannot be assembled is refused
# with a message before a job is queued.
DELINEO_UPLOAD_PREFLIGHT = env_bool("DELINEO_UPLOAD_PREFLIGHT", True)
# Whether the upload form's "De-identify" box starts ticked, and the API's default for
# `deidentify` (docs/security.md, "De-identification").
DELINEO_DEIDENTIFY_DEFAULT = env_bool("DELINEO_DEIDENTIFY_DEFAULT", False)
# --- DICOM node (docs/dicom-networking.md) ---------------------------------------------
# `manage.py dicom_node`: a Storage SCP that peers configured by an administrator
# (`manage.py dicom_peer`) send scans to, and the SCU that sends results back.
DICOM_NODE_AE_TITLE = env_str("DICOM_NODE_AE_TITLE", "DELINEO")
if len(DICOM_NODE_AE_TITLE) > 16 or not DICOM_NODE_AE_TITLE.isascii() or "\\" in DICOM_NODE_AE_TITLE:
    raise ImproperlyConfigured(
        f"DICOM_NODE_AE_TITLE={DICOM_NODE_AE_TITLE!r} is not a DICOM AE title "
        "(at most 16 ASCII characters, no backslash)"
    )
# Loopback unless set: a node reachable from the hospital network is a decision (0.0.0.0 in the Dockerfile).
DICOM_NODE_HOST = env_str("DICOM_NODE_HOST", "127.0.0.1")
DICOM_NODE_PORT = env_int("DICOM_NODE_PORT", 11112, minimum=1)
if DICOM_NODE_PORT > 65535:
    raise ImproperlyConfigured(f"DICOM_NODE_PORT={DICOM_NODE_PORT} is not a TCP port (1 to 65535)")
# An association as a peer's AE title must come from an address of that peer's host.
DICOM_NODE_CHECK_PEER_HOST = env_bool("DICOM_NODE_CHECK_PEER_HOST", True)
# DICOM over TLS (webapp/delineation/dicom/tls.py): the node's certificate and key (PEM);
# with both, it accepts TLS only. With a CA file, peers must present a certificate it signed.
DICOM_NODE_TLS_CERT = env_str("DICOM_NODE_TLS_CERT", "")
DICOM_NODE_TLS_KEY = env_str("DICOM_NODE_TLS_KEY", "")
DICOM_NODE_TLS_CA = env_str("DICOM_NODE_TLS_CA", "")
if bool(DICOM_NODE_TLS_CERT) != bool(DICOM_NODE_TLS_KEY):
    raise ImproperlyConfigured("DICOM_NODE_TLS_CERT and DICOM_NODE_TLS_KEY go together: set both, or neither")
# A study is complete once its association was released and nothing arrived for this long.
DICOM_NODE_SERIES_QUIET_S = env_int("DICOM_NODE_SERIES_QUIET_S", 10, minimum=0)
# Sending results to a peer (C-STORE SCU): attempts, and the first wait between them in
# seconds (doubled each time, at most DICOM_SEND_MAX_DELAY_S).
DICOM_SEND_ATTEMPTS = env_int("DICOM_SEND_ATTEMPTS", 5, minimum=1)
DICOM_SEND_RETRY_DELAY_S = env_int("DICOM_SEND_RETRY_DELAY_S", 30, minimum=0)
DICOM_SEND_MAX_DELAY_S = env_int("DICOM_SEND_MAX_DELAY_S", 600, minimum=0)
# Seconds to wait for a peer's answers (association, DIMSE, network) before giving up.
DICOM_NETWORK_TIMEOUT_S = env_int("DICOM_NETWORK_TIMEOUT_S", 30, minimum=1)
# --- Retention (docs/security.md, "Retention") -------------------------------------------
# Days a scan (with its jobs and files) is kept; `manage.py purge_old_data` deletes older ones.
# Unset or 0: kept until deleted by hand.
DELINEO_RETENTION_DAYS = env_int("DELINEO_RETENTION_DAYS", 0, minimum=0) or None
# Days an access-log event is kept; the same command deletes older ones. Its own period,
# not the scans': an audit trail usually has to outlive the data it describes. Unset or 0: kept.
DELINEO_AUDIT_RETENTION_DAYS = env_int("DELINEO_AUDIT_RETENTION_DAYS", 0, minimum=0) or None
FILE_UPLOAD_HANDLERS = [
    "webapp.delineation.upload_limits.UploadLimitHandler",  # first: stops the upload at the limits, with a message
    "django.core.files.uploadhandler.MemoryFileUploadHandler",
    # Files over FILE_UPLOAD_MAX_MEMORY_SIZE: spooled to a file without a name, which the
    # kernel frees however the request ends (a killed server leaves none behind).
    "webapp.delineation.upload_limits.AnonymousTemporaryFileUploadHandler",
]
# Django's own refusal (a bare 400) one file later than UploadLimitHandler's, which says why.
DATA_UPLOAD_MAX_NUMBER_FILES = DELINEO_MAX_UPLOAD_FILES + 1
DATA_UPLOAD_MAX_NUMBER_FIELDS = DELINEO_MAX_UPLOAD_FILES + 1000  # one "paths" field per file
FILE_UPLOAD_MAX_MEMORY_SIZE = 10 << 20
# Larger files are spooled here while the request is read, deleted at its end (default:
# the system's temporary folder). They hold patient data: keep it on encrypted storage.
FILE_UPLOAD_TEMP_DIR = env_str("FILE_UPLOAD_TEMP_DIR", "") or None
FILE_UPLOAD_PERMISSIONS = 0o640
FILE_UPLOAD_DIRECTORY_PERMISSIONS = 0o750

# --- REST API -------------------------------------------------------------------------
REST_FRAMEWORK = {
    # Token first: an anonymous request gets 401 with a WWW-Authenticate header.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": None,
    # Sign-in attempts (token endpoint and login page, throttling.py; docs/security.md,
    # "Sign-in attempts"): per client address, and per username from any address.
    "DEFAULT_THROTTLE_RATES": {
        "login": env_rate("DELINEO_LOGIN_RATE", "10/min"),
        "login_username": env_rate("DELINEO_LOGIN_USERNAME_RATE", "30/hour"),
    },
    # The client's address is REMOTE_ADDR, never a header it could send itself; behind the
    # TLS proxy, the address that proxy puts last in X-Forwarded-For.
    "NUM_PROXIES": 1 if SECURE_PROXY_SSL_HEADER else 0,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Delineo API",
    "DESCRIPTION": "Automatic delineation for radiotherapy: upload a planning CT, run a model, "
    "download NIfTI masks and an RTSTRUCT.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    "COMPONENT_SPLIT_REQUEST": True,
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "webapp.delineation.schema.strip_download_slash",
        "webapp.delineation.schema.document_error_responses",
    ],
}

# --- Jobs (docs/security.md, "No lost work") -------------------------------------------
# A job still running after the soft limit (seconds) is stopped and failed with a message
# ("took longer than N minutes"); the hard limit kills its worker process if the soft stop
# does not come through (stuck in native code), and the job is failed with the same message.
DELINEO_JOB_SOFT_TIME_LIMIT = env_int("DELINEO_JOB_SOFT_TIME_LIMIT", 3600, minimum=60)
DELINEO_JOB_TIME_LIMIT = env_int("DELINEO_JOB_TIME_LIMIT", DELINEO_JOB_SOFT_TIME_LIMIT + 300, minimum=60)
if DELINEO_JOB_TIME_LIMIT <= DELINEO_JOB_SOFT_TIME_LIMIT:
    raise ImproperlyConfigured(
        f"DELINEO_JOB_TIME_LIMIT={DELINEO_JOB_TIME_LIMIT} must be longer than "
        f"DELINEO_JOB_SOFT_TIME_LIMIT={DELINEO_JOB_SOFT_TIME_LIMIT}: the soft limit stops the job with a message, "
        "the hard limit only kills a worker that did not stop"
    )
# How many times a job is started before it is failed instead of run again. A job starts
# again when its worker died mid-job (killed, out of memory, machine lost) and the broker
# delivered it again; an input that kills the worker every time fails with a message.
DELINEO_JOB_MAX_ATTEMPTS = env_int("DELINEO_JOB_MAX_ATTEMPTS", 3, minimum=1)

# --- Celery ---------------------------------------------------------------------------
# Default broker: kombu's SQLAlchemy transport on an SQLite file, no server needed.
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", f"sqla+sqlite:///{VAR_DIR / 'celery-broker.sqlite3'}")
# Redis only: a job not acknowledged within this time is delivered again, to another
# worker if one is free, which would start it over while the first still runs: it must be
# longer than the longest a job can run (DELINEO_JOB_TIME_LIMIT).
CELERY_VISIBILITY_TIMEOUT = env_int("CELERY_VISIBILITY_TIMEOUT", 6 * 3600, minimum=60)
if CELERY_BROKER_URL.startswith("sqla+sqlite:///"):
    Path(CELERY_BROKER_URL.removeprefix("sqla+sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    # Passed to SQLAlchemy's create_engine: wait for the SQLite lock rather than fail.
    CELERY_BROKER_TRANSPORT_OPTIONS = {"connect_args": {"timeout": 30}}
elif CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
    if CELERY_VISIBILITY_TIMEOUT <= DELINEO_JOB_TIME_LIMIT:
        raise ImproperlyConfigured(
            f"CELERY_VISIBILITY_TIMEOUT={CELERY_VISIBILITY_TIMEOUT} must be longer than "
            f"DELINEO_JOB_TIME_LIMIT={DELINEO_JOB_TIME_LIMIT}: otherwise Redis hands a running job to a second "
            "worker, which starts it over"
        )
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": CELERY_VISIBILITY_TIMEOUT}
# The job reaper (webapp/delineation/reaper.py): in the worker, at start-up and every
# DELINEO_REAPER_INTERVAL seconds, a running job whose worker died is queued again (or failed
# when it has no attempt left), a queued job whose message is lost (older than
# DELINEO_REAPER_GRACE seconds) is sent again, and the broker's used messages are deleted.
# On by default with the SQLite broker, which has no visibility timeout.
DELINEO_REAPER = env_bool("DELINEO_REAPER", CELERY_BROKER_URL.startswith("sqla+"))
DELINEO_REAPER_INTERVAL = env_int("DELINEO_REAPER_INTERVAL", 60, minimum=1)
DELINEO_REAPER_GRACE = env_int("DELINEO_REAPER_GRACE", 60, minimum=0)
CELERY_RESULT_BACKEND = env_str("CELERY_RESULT_BACKEND", "") or None  # job state lives in the Job table
CELERY_TASK_DEFAULT_QUEUE = env_str("CELERY_TASK_DEFAULT_QUEUE", "delineo")
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_TASK_EAGER_PROPAGATES = False
# A job is acknowledged when it ends, not when it starts: if its worker process dies
# (killed, out of memory) the job goes back to the queue (reject on worker lost) and is
# started over, at most DELINEO_JOB_MAX_ATTEMPTS times. A job that raised, or ran past its
# hard time limit, is acknowledged and not run again (acks on failure or timeout).
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_TASK_ACKS_ON_FAILURE_OR_TIMEOUT = True
# Each worker process reserves one job at a time: a queued job waits in the broker, where
# any free worker can take it, not behind a running one.
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# When the worker loses the broker (Redis restarted), running jobs go on; their messages
# are put back in the queue, and a second delivery of a job that is still running is
# dropped by the task (runner.execute_job holds a lock per job), so nothing is lost or
# run twice. Cancelling them instead would start every running job over.
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
# Bounds for any task; the job task has its own (DELINEO_JOB_*_TIME_LIMIT, tasks.run_job).
CELERY_TASK_SOFT_TIME_LIMIT = DELINEO_JOB_SOFT_TIME_LIMIT
CELERY_TASK_TIME_LIMIT = DELINEO_JOB_TIME_LIMIT
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

# Applies LOGGING, then logs Python's warnings (to `py.warnings`) rather than printing them.
LOGGING_CONFIG = "webapp.delineation.redact.configure_logging"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "filters": {
        # Exceptions are logged without their messages, which may quote patient data (redact.py).
        "withhold_exception_messages": {"()": "webapp.delineation.redact.WithholdExceptionMessages"},
        # pydicom's messages and warnings without the DICOM values and file paths they quote.
        "withhold_dicom_values": {"()": "webapp.delineation.redact.WithholdDicomValues"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["withhold_exception_messages"]}
    },
    # On these loggers, not on a handler: every handler then gets the records without the values.
    # pydicom and highdicom log UIDs and file names at INFO and DEBUG: WARNING and above only.
    # Django's own "django" handlers (a console handler with DEBUG on, mail to ADMINS without)
    # are removed: its records go to the root handler above, once, redacted.
    "loggers": {
        "pydicom": {"filters": ["withhold_dicom_values"], "level": "WARNING"},
        "highdicom": {"level": "WARNING"},
        # pynetdicom dumps each DIMSE request (SOP Instance UIDs) at INFO and DEBUG; the node
        # logs associations and statuses itself (webapp/delineation/dicom/scp.py).
        "pynetdicom": {"filters": ["withhold_dicom_values"], "level": "WARNING"},
        "py.warnings": {"filters": ["withhold_dicom_values"]},
        "django": {"handlers": [], "level": "INFO", "propagate": True},
    },
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
}
