"""gunicorn settings for the web server of `make run` and of the test stack (tests/stack.py):
one process with threads (gthread), so that uploads, downloads and the pages' polling are
served at once, and the SQLite database and the sign-in counts (in that process's memory)
are shared by all of them. The address comes from the command line (``-b HOST:PORT``)."""

import os

wsgi_app = "webapp.wsgi:application"
worker_class = "gthread"
workers = int(os.environ.get("WEB_WORKERS", "1"))
threads = int(os.environ.get("WEB_THREADS", "16"))
# A large upload or download may take minutes; threads are not killed by the heartbeat.
timeout = 300
graceful_timeout = 30
# Connections waiting to be accepted beyond the busy threads.
backlog = 2048
accesslog = "-"
# Request lines only (the URL holds ids, never a name); no headers, no query values.
access_log_format = '%(h)s "%(m)s %(U)s" %(s)s %(B)s %(L)ss'
