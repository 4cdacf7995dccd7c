"""Forms of the pages (the upload page also works without JavaScript)."""

from __future__ import annotations

from django import forms

from webapp.delineation import services


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class UploadForm(forms.Form):
    """A scan (zip, NIfTI or the files of a DICOM folder) and the model to run on it."""

    file = forms.FileField(required=False, label="Zip or NIfTI file")
    files = forms.FileField(
        required=False,
        label="DICOM folder",
        widget=MultipleFileInput(attrs={"webkitdirectory": True, "directory": True, "multiple": True}),
    )
    model = forms.ChoiceField(label="Model")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        names = services.available_models()
        self.fields["model"].choices = [(n, n) for n in names]
        self.no_models = not names
