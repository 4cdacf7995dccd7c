"""The DICOM node (docs/dicom-networking.md): a Storage SCP that configured peers send
scans to (``scp``), series assembly into scans (``assembly``), and the C-STORE SCU that
sends results back (``send``). Built on pynetdicom; imports nothing of the engine."""
