"""What the node accepts: its conformance statement in code (docs/dicom-networking.md).

The node negotiates every storage SOP class, so that a PACS sending a whole study (CT,
RT Plan, RT Dose, ...) in one association gets, for each object it cannot use, a C-STORE
status that says so (0x0122, "Refused: SOP Class not supported") rather than a failed
presentation context that some senders report as a network error.
"""

from __future__ import annotations

from pydicom.uid import (
    JPEG2000,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    EnhancedCTImageStorage,
    EnhancedMRImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    MRImageStorage,
    RLELossless,
    RTStructureSetStorage,
)
from pynetdicom import AllStoragePresentationContexts, build_context
from pynetdicom.sop_class import Verification

# Stored and ingested: images the engine reads as volumes, and structure sets (the
# planning contours of the adaptive workflow, or contours to audit).
IMAGE_SOP_CLASSES = frozenset({CTImageStorage, EnhancedCTImageStorage, MRImageStorage, EnhancedMRImageStorage})
ACCEPTED_SOP_CLASSES = IMAGE_SOP_CLASSES | {RTStructureSetStorage}

# Uncompressed, and the compressed syntaxes the engine decodes (pylibjpeg, pyjpegls, RLE
# in requirements.txt). Objects are stored in the syntax they were sent in.
TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
]

# C-STORE statuses (DICOM PS3.4 Annex B.2.3, PS3.7 Annex C).
SUCCESS = 0x0000
REFUSED_SOP_CLASS_NOT_SUPPORTED = 0x0122
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110


def supported_contexts() -> list:
    """The presentation contexts the SCP accepts: every storage SOP class (see module doc)
    and Verification, each with ``TRANSFER_SYNTAXES``."""
    contexts = [build_context(cx.abstract_syntax, TRANSFER_SYNTAXES) for cx in AllStoragePresentationContexts]
    contexts.append(build_context(Verification, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]))
    return contexts
