"""Segmentation of one scan, input grid in and out (the engine's inference API).

Pipeline (stages reported through ``progress``): ingest (read DICOM/NIfTI), preprocess
(reorient to RAS, resample to the model spacing, window HU), network (sliding window,
sigmoid), export (largest component, probabilities resampled back to the input grid
and thresholded, NIfTI, structures.json, RTSTRUCT and DICOM SEG; for NIfTI input also
the CT as a DICOM series for the RTSTRUCT and SEG to reference).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor

from engine.infer.body import BODY_HU, body_box
from engine.infer.domain import check_domain, check_modality
from engine.infer.grid import image_to_model_grid, labels_to_input_grid
from engine.infer.memory import return_large_blocks_to_os
from engine.infer.predict import (
    MIN_STRUCTURE_CM3,
    inference_bfloat16,
    keep_largest_component,
    predict_probabilities,
    test_time_mirror,
)
from engine.io.dicom_seg import build_segmentation, write_segmentation
from engine.io.dicom_series import DicomSeries
from engine.io.dicom_write import (
    DicomWriteError,
    labels_on_series_grid,
    write_ct_series,
    zip_series,
)
from engine.io.reader import read_input
from engine.io.rtstruct import build_rtstruct, write_rtstruct
from engine.io.rtstruct_check import check_rtstruct
from engine.models.registry import LoadedModel, Structure, load_model
from engine.results import ResultFolder, StructureEntry
from engine.volume import LabelMap, Volume

Progress = Callable[[str, int], None]

# Overall percent reached at the end of each stage, for progress reporting.
STAGE_END = {"ingest": 10, "preprocess": 20, "network": 75, "export": 100}


@dataclass(frozen=True)
class SegmentationResult:
    structures: list[StructureEntry]  # as structures.json
    timings_s: dict[str, float]
    rtstruct: Path | None
    input_kind: str
    model_name: str
    weights_sha256: str
    # Round-trip Dice per structure of the RTSTRUCT (empty when none was written).
    rtstruct_roundtrip: dict[str, float] = field(default_factory=dict)
    seg: Path | None = None  # DICOM SEG
    ct_dicom_zip: Path | None = None  # NIfTI input exported as a DICOM CT series
    notes: list[str] = field(default_factory=list)  # what was not exported, and why
    # engine.infer.domain.check_domain's result; None for a card without a domain.
    domain: dict | None = None


def network_box(image: torch.Tensor, config: dict) -> tuple[slice, ...]:
    """Where the network runs on the model grid, (1, X, Y, Z) normalised as
    ``engine.infer.grid.image_to_model_grid`` makes it: around the body
    (``engine.infer.body``) where the card allows it (``"crop_to_body": true``, chosen
    on val by ``experiments/inference_settings.py``), else the whole grid. Outside it the
    probabilities are 0."""
    if not config.get("crop_to_body"):
        return tuple(slice(0, n) for n in image.shape[1:])
    lo, hi = config["window_hu"]
    return body_box(image.as_tensor()[0].numpy() > (BODY_HU - lo) / (hi - lo), config["spacing_mm"])


def structure_probabilities(volume: Volume, model: LoadedModel, progress: Progress | None = None) -> MetaTensor:
    """The network's probability of each of ``model``'s structures for ``volume``.

    ``volume.array`` is (I, J, K) in HU with any RAS affine; the result is a float32
    MetaTensor (C, X, Y, Z) on the model grid (``affine`` maps its voxels to RAS mm), C
    following ``model.config['structures']``: the sigmoid of the sliding-window output,
    each structure cut to its largest connected component above the threshold and 0
    outside the network's box (``network_box``).
    """
    cfg = model.config
    report = progress or (lambda stage, pct: None)
    report("preprocess", STAGE_END["ingest"])
    image = image_to_model_grid(volume, cfg["spacing_mm"], cfg["window_hu"], cfg["axcodes"])
    report("network", STAGE_END["preprocess"])
    box = network_box(image, cfg)
    in_box = predict_probabilities(
        model.network,
        image.as_tensor()[None][(slice(None), slice(None), *box)],
        cfg["roi_size"],
        model.device,
        test_time_mirror(cfg),
        inference_bfloat16(cfg, model.device),
    )[0]
    report("export", STAGE_END["network"])
    prob = np.zeros((in_box.shape[0], *image.shape[1:]), dtype=np.float32)
    min_voxels = int(np.ceil(MIN_STRUCTURE_CM3 * 1000.0 / float(np.prod(cfg["spacing_mm"]))))
    prob[(slice(None), *box)] = keep_largest_component(in_box.numpy(), cfg["threshold"], min_voxels)
    del in_box
    return MetaTensor(torch.as_tensor(prob), affine=image.affine)


def segment_volume(volume: Volume, model: LoadedModel, progress: Progress | None = None) -> LabelMap:
    """Delineate ``model``'s structures on ``volume``; the label map is on the volume's grid.

    ``volume.array`` is (I, J, K) in HU with any RAS affine; the result is a uint8
    (I, J, K) label map on the same grid. Labels follow ``model.config['structures']``
    (0 = background); where structures overlap, the voxel goes to the most probable one.
    Memory: the probabilities on the model grid, one uint8 (I, J, K) grid and one
    float32 box per structure around it (``engine.infer.grid.labels_to_input_grid``).
    """
    cfg = model.config
    prob = structure_probabilities(volume, model, progress)
    label_values = [s["label"] for s in cfg["structures"]]
    return labels_to_input_grid(prob, volume, label_values, cfg["threshold"])


def write_nifti_outputs(
    volume: Volume, labels: LabelMap, structures: list[Structure], out: ResultFolder
) -> list[StructureEntry]:
    """Write ``image.nii.gz`` (``volume`` as int16 HU), ``labels.nii.gz``, one mask per
    structure and ``structures.json`` (``ResultFolder.write_structures``); returns the
    entries of ``structures.json``: label, name, colour [r, g, b], volume in cm3, file."""
    out.write_image(volume)
    out.write_labels(labels)
    return out.write_structures(labels, structures)


@dataclass
class DicomExports:
    rtstruct: Path | None = None
    seg: Path | None = None
    ct_dicom_zip: Path | None = None
    roundtrip: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def write_dicom_outputs(
    labels: LabelMap,
    volume: Volume,
    series: DicomSeries | None,
    structures: list[Structure],
    model_name: str,
    weights_sha256: str,
    out: ResultFolder,
) -> DicomExports:
    """Write ``rtstruct.dcm`` (after its round-trip check) and ``seg.dcm``, and for NIfTI
    input (``series`` None) first the image as ``ct_dicom/`` + ``ct_dicom.zip`` for them
    to reference.

    Not written, with a note saying why: any DICOM output for a NIfTI image whose affine
    has shear (DICOM cannot represent it); the SEG of a series without Study or Series
    Instance UID (it could not reference it).

    Raises:
        engine.io.rtstruct_check.RTStructExportError: a structure's contours do not
            reproduce it (Dice < 0.98); ``rtstruct.dcm`` is then not written.
    """
    exports = DicomExports()
    if series is None:
        try:
            written = write_ct_series(volume, out / out.CT_DICOM, description="Delineo CT")
        except DicomWriteError as exc:
            exports.notes.append(f"no DICOM export (CT series, RTSTRUCT, SEG): {exc}")
            return exports
        exports.ct_dicom_zip = zip_series(written, out / out.CT_DICOM_ZIP)
        series = written.series
        labels = labels_on_series_grid(labels, series)  # rows reversed if left-handed
    ds = build_rtstruct(labels, series, structures, model_name, weights_sha256)
    # Checked before writing: a failing RTSTRUCT must never reach a planning system.
    exports.roundtrip = check_rtstruct(ds, labels, series, structures, out / out.RTSTRUCT_CHECK)
    exports.rtstruct = write_rtstruct(ds, out / out.RTSTRUCT)
    if series.study_instance_uid and series.series_instance_uid:
        exports.seg = write_segmentation(
            build_segmentation(labels, series, structures, model_name, weights_sha256),
            out / out.SEG,
        )
    else:
        exports.notes.append(
            "no DICOM SEG, and an RTSTRUCT that references the slices only: the series "
            "has no Study or Series Instance UID"
        )
    return exports


def segment_file(
    input_path: str | Path,
    model_name: str,
    out_dir: str | Path,
    progress: Progress | None = None,
    series: str | None = None,
) -> SegmentationResult:
    """Segment the scan at ``input_path`` (DICOM folder or zip, or NIfTI) into ``out_dir``.

    ``series`` is the key of the DICOM image series to use when the input holds several
    (``engine.io.preflight.inspect_input`` lists them).

    Writes ``image.nii.gz`` (input as int16 NIfTI), ``labels.nii.gz`` (uint8, input grid),
    ``structures/<name>.nii.gz``, ``structures.json``, ``rtstruct.dcm`` with
    ``rtstruct_check.json`` (its round-trip Dice per structure, see
    ``engine.io.rtstruct_check``), ``seg.dcm`` (DICOM SEG) and ``domain.json`` (whether
    the scan is inside the model's domain, ``engine.infer.domain``). These reference the input
    series; for NIfTI input they reference the image written as a new DICOM CT series,
    ``ct_dicom/`` and ``ct_dicom.zip`` (``engine.io.dicom_write``; anonymous patient), so
    a planning system can import both. Exceptions to this: see ``write_dicom_outputs``.

    Raises:
        engine.errors.InputError: the input cannot be read as one 3D volume.
        engine.infer.domain.DomainError: a DICOM series of another modality than the
            model's (e.g. MR into a CT model); nothing is written.
        engine.models.registry.UnknownModelError: ``model_name`` is not shipped.
        engine.io.rtstruct_check.RTStructExportError: the RTSTRUCT's contours do not
            reproduce a structure (Dice < 0.98); ``rtstruct.dcm`` is then not written.
    """
    return_large_blocks_to_os()
    report = progress or (lambda stage, pct: None)
    out = ResultFolder(out_dir)
    out.path.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    stage_start = time.perf_counter()
    current = "ingest"

    def on_stage(stage: str, pct: int) -> None:
        nonlocal stage_start, current
        now = time.perf_counter()
        timings[current] = round(timings.get(current, 0.0) + now - stage_start, 3)
        stage_start, current = now, stage
        report(stage, pct)

    report("ingest", 0)
    model = load_model(model_name)
    volume, dicom = read_input(input_path, series)
    card_domain = model.config.get("domain")
    if card_domain and dicom is not None:
        check_modality(str(dicom.header.get("Modality", "")), card_domain, model.name)
    labels = segment_volume(volume, model, on_stage)
    domain = None
    if card_domain:
        names = {s.label: s.name for s in model.structures}
        domain = check_domain(volume, labels, names, card_domain, model.name)
        out.write_json(out.DOMAIN, domain, allow_nan=True)
    table = write_nifti_outputs(volume, labels, model.structures, out)
    input_kind = "dicom" if dicom is not None else "nifti"
    exports = write_dicom_outputs(labels, volume, dicom, model.structures, model.name, model.weights_sha256, out)
    on_stage("done", 100)
    timings.pop("done", None)
    return SegmentationResult(
        structures=table,
        timings_s=timings,
        rtstruct=exports.rtstruct,
        input_kind=input_kind,
        model_name=model.name,
        weights_sha256=model.weights_sha256,
        rtstruct_roundtrip=exports.roundtrip,
        seg=exports.seg,
        ct_dicom_zip=exports.ct_dicom_zip,
        notes=exports.notes,
        domain=domain,
    )
