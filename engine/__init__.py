"""Delineo delineation engine: DICOM/NIfTI I/O, networks, training and inference.

Pure Python + PyTorch + MONAI; never imports Django (``tests/test_engine_boundary.py``).
"""

__version__ = "0.1.0"
