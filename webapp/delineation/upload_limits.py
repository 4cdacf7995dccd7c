"""The limits of an upload request, applied while its body streams in: the file count and
the size (``DELINEO_MAX_UPLOAD_FILES``, ``DELINEO_MAX_UPLOAD_BYTES``), and large files
spooled to files without a name (see ``FILE_UPLOAD_HANDLERS`` in the settings)."""

from __future__ import annotations

import tempfile

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.core.files.uploadhandler import FileUploadHandler, StopUpload

from webapp.delineation.upload_checks import UploadError, too_large, too_many_files

# Set on the request by UploadLimitHandler; read by the views through refusal_of().
_REFUSAL = "delineo_upload_refusal"


class UploadLimitHandler(FileUploadHandler):
    """The first of ``FILE_UPLOAD_HANDLERS``: counts the files and bytes of a request while
    the body streams in, and stops the upload as soon as ``DELINEO_MAX_UPLOAD_FILES`` or
    ``DELINEO_MAX_UPLOAD_BYTES`` is passed: no byte beyond the limit reaches the handlers
    that store files, and those stored so far are dropped with the request. Django then
    reads and discards the rest of the body so that the client receives the message: at
    most about the size limit, because a ``Content-Length`` far above the limit stops the
    upload at its first file, before any of its bytes are read, and leaves the body unread.
    Form fields sent before the files (the CSRF token of the upload page) are kept. The
    refusal is left on the request for the view (:func:`refusal_of`)."""

    def __init__(self, request=None) -> None:
        super().__init__(request)
        self.declared = self.received = self.files = 0

    def handle_raw_input(self, input_data, META, content_length, boundary, encoding=None):
        self.declared = content_length
        return None  # parse as usual

    def new_file(self, *args, **kwargs) -> None:
        super().new_file(*args, **kwargs)
        self.files += 1
        byte_limit, file_limit = settings.DELINEO_MAX_UPLOAD_BYTES, settings.DELINEO_MAX_UPLOAD_FILES
        if self.files > file_limit:
            self._refuse(too_many_files(file_limit), reset=False)
        # Room for the multipart headers and one "paths" field per file.
        if self.declared > byte_limit + (1 << 20) + 2048 * file_limit:
            self._refuse(too_large(byte_limit), reset=True)  # do not read gigabytes only to discard them

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes:
        self.received += len(raw_data)
        if self.received > settings.DELINEO_MAX_UPLOAD_BYTES:
            self._refuse(too_large(settings.DELINEO_MAX_UPLOAD_BYTES), reset=False)
        return raw_data  # to the next handler, which stores it

    def file_complete(self, file_size: int) -> None:
        return None  # the next handler returns the file

    def _refuse(self, error: UploadError, reset: bool) -> None:
        """Record the refusal and stop the parser. ``reset``: leave the rest of the body unread
        (the server may drop the connection); otherwise Django reads and discards it."""
        if self.request is not None:
            setattr(self.request, _REFUSAL, error)
        raise StopUpload(connection_reset=reset)


class AnonymousTemporaryFileUploadHandler(FileUploadHandler):
    """Django's ``TemporaryFileUploadHandler`` without a name on disk: each file of a request
    larger than ``FILE_UPLOAD_MAX_MEMORY_SIZE`` is spooled to ``tempfile.TemporaryFile`` in
    ``FILE_UPLOAD_TEMP_DIR``, which has no directory entry (``O_TMPFILE``, or unlinked as
    soon as it is made). The kernel frees it when the file is closed or its process ends,
    however it ends: a web server killed in the middle of a 2 GB upload leaves nothing."""

    def new_file(self, *args, **kwargs) -> None:
        super().new_file(*args, **kwargs)
        spool = tempfile.TemporaryFile(dir=settings.FILE_UPLOAD_TEMP_DIR)
        self.file = UploadedFile(spool, self.file_name, self.content_type, 0, self.charset, self.content_type_extra)

    def receive_data_chunk(self, raw_data: bytes, start: int) -> None:
        self.file.write(raw_data)

    def file_complete(self, file_size: int) -> UploadedFile:
        self.file.seek(0)
        self.file.size = file_size
        return self.file

    def upload_interrupted(self) -> None:
        if hasattr(self, "file"):
            self.file.close()


def refusal_of(request) -> UploadError | None:
    """The refusal :class:`UploadLimitHandler` left on ``request`` (a Django or DRF request),
    once its body has been read (``request.FILES``)."""
    return getattr(getattr(request, "_request", request), _REFUSAL, None)
