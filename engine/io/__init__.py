"""Image and structure I/O: DICOM series assembly, NIfTI, RTSTRUCT."""
