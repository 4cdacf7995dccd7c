"""Forms of the pages (the upload page also works without JavaScript)."""

from __future__ import annotations

from django import forms
from django.conf import settings

from webapp.delineation import engine_client


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class MultipleFileField(forms.FileField):
    """The files of a folder (``<input webkitdirectory>``); cleans to a list."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("widget", MultipleFileInput(attrs={"webkitdirectory": True, "directory": True}))
        super().__init__(*args, **kwargs)

    def clean(self, data, initial=None):
        if isinstance(data, (list, tuple)):
            return [super(MultipleFileField, self).clean(item, initial) for item in data]
        return [super().clean(data, initial)] if data else []


class UploadForm(forms.Form):
    """A scan: a zip, a NIfTI file or the files of a DICOM folder (the model is chosen
    on the scan page, after the pre-flight report)."""

    file = forms.FileField(required=False, label="Zip or NIfTI file")
    files = MultipleFileField(required=False, label="DICOM folder")
    deidentify = forms.BooleanField(required=False, label="De-identify")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["deidentify"].initial = settings.DELINEO_DEIDENTIFY_DEFAULT
        self.no_models = not engine_client.available_models()
