"""A volume end to end on real files: ingest (NIfTI, and a DICOM series zipped with a localizer, shuffled
names and reversed instance numbers) -> correct some slices -> save -> export NIfTI and DICOM-SEG, read
back by nibabel and highdicom voxel for voxel, with every SEG frame referencing its source slice."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medclipseg.annotation import volume_files
from medclipseg.annotation.export import export_dataset
from medclipseg.annotation.service import AnnotationService
from medclipseg.annotation.store import AnnotationStore
from volume_support import real_t1, write_dicom_series, write_localizer, zip_folder

pytest.importorskip("highdicom")

PROMPT = "brain tissue in the T1 MRI"


def small_t1():
    """A 40 x 44 x 10 block of the real T1, for a fast round trip."""
    from medclipseg.io.volumes import ScanVolume

    volume = real_t1(crop=True)
    shift = np.eye(4)
    shift[:3, 3] = (10, 12, 14)
    return ScanVolume(array=volume.array[10:50, 12:56, 14:24].copy(), affine=volume.affine @ shift, modality="MR",
                      name="t1.nii.gz")


@pytest.fixture()
def service(tmp_path, small_tiny_predictor):
    store = AnnotationStore(tmp_path / "annotations.db")
    service = AnnotationService(store, predictor=small_tiny_predictor, num_samples=2, volume_samples=2)
    yield service
    service.close()
    store.close()


def painted_cube(geometry) -> np.ndarray:
    """A cube in display space over slices 2..4, the slices the annotator reviewed."""
    mask = np.zeros(geometry.display_shape, bool)
    mask[2:5, 6:20, 8:25] = True
    return mask


def test_nifti_ingest_correct_export_nifti_round_trip(tmp_path, service):
    volume = small_t1()
    # Stored in another voxel order than RAS: the export must come back on the file's own grid.
    image = volume.nifti_image()
    ornt = nib.orientations.ornt_transform(nib.orientations.io_orientation(image.affine),
                                           nib.orientations.axcodes2ornt(("P", "L", "I")))
    reordered = image.as_reoriented(ornt)
    source = tmp_path / "scans"
    source.mkdir()
    nib.save(reordered, str(source / "subject1.nii.gz"))
    report = service.ingest(source, prompt=PROMPT, num_samples=2)
    assert report.failed == [] and len(report.volumes) == 1, report.summary()
    case = service.store.get_case(report.volumes[0])
    assert case.is_volume and case.start_slice is not None
    geometry = service.store.volume_geometry(case.id)
    cube = painted_cube(geometry)
    service.save(case.id, cube, annotator="ann", reviewed_slices=[2, 3, 4])

    out = tmp_path / "export"
    result = export_dataset(service.store, out, volume_format="nifti", val_fraction=0.0, test_fraction=0.0)
    manifest = json.loads(result.manifest_path.read_text())
    entry = next(e for e in manifest["cases"] if e["case_id"] == case.id)
    assert entry["kind"] == "volume" and entry["reviewed_slices"] == [2, 3, 4]
    assert [s["slice"] for s in entry["slices"]] == [2, 3, 4]
    mask_image = nib.load(str(out / entry["files"]["mask"]))
    original = nib.load(str(source / "subject1.nii.gz"))
    assert mask_image.shape == original.shape
    assert np.allclose(mask_image.affine, original.affine, atol=1e-5)
    exported = np.asarray(mask_image.dataobj) > 0
    # The painted cube, taken from display space to the file's grid by an independent route:
    # nibabel's own reorientation of the display array with the display affine.
    from medclipseg.io.volumes import ScanVolume

    stored = ScanVolume(array=np.asarray(original.dataobj, dtype=np.float32), affine=original.affine)
    display_image = nib.Nifti1Image(cube.astype(np.uint8), stored.display_affine(geometry.plane))
    back = display_image.as_reoriented(nib.orientations.ornt_transform(
        nib.orientations.io_orientation(display_image.affine), nib.orientations.io_orientation(original.affine)))
    assert np.allclose(back.affine, original.affine, atol=1e-5)
    assert np.array_equal(exported, np.asarray(back.dataobj) > 0)
    scan = nib.load(str(out / entry["files"]["image"]))
    assert np.allclose(np.asarray(scan.dataobj), np.asarray(original.dataobj))
    # The reviewed slices are in the authors' layout too, as 2-D training examples.
    label = out / entry["slices"][0]["label"]
    assert label.is_file()


def test_dicom_series_zip_ingest_export_dicom_seg_round_trip(tmp_path, service):
    import highdicom as hd

    from medclipseg.io.volume_writers import read_dicom_seg_mask

    volume = small_t1()
    folder = tmp_path / "study"
    paths = write_dicom_series(volume, folder / "t1", shuffle_names=True, reverse_instance_numbers=True)
    import pydicom

    study_uid = pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID
    write_localizer(folder / "localizer", study_uid)
    archive = zip_folder(folder, tmp_path / "study.zip")
    report = service.ingest(archive, prompt=PROMPT, num_samples=2)
    assert not [name for name, _ in report.failed if "t1" in name], report.summary()
    series_cases = [service.store.get_case(case_id) for case_id in report.volumes]
    t1_case = next(case for case in series_cases if case.original_name.startswith("t1"))
    geometry = service.store.volume_geometry(t1_case.id)
    assert geometry.depth == 10 and geometry.source_format == "dicom"
    cube = painted_cube(geometry)
    service.save(t1_case.id, cube, annotator="ann", reviewed_slices=[2, 3, 4])

    out = tmp_path / "export"
    result = export_dataset(service.store, out, volume_format="dicom-seg", val_fraction=0.0, test_fraction=0.0)
    entry = next(e for e in json.loads(result.manifest_path.read_text())["cases"] if e["case_id"] == t1_case.id)
    seg_path = out / entry["files"]["dicom_seg"]
    seg = hd.seg.segread(str(seg_path))
    assert seg.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
    assert int(seg.NumberOfFrames) == 10  # every slice, the empty ones too
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "SEMIAUTOMATIC"
    assert seg.SegmentSequence[0].SegmentLabel == "Brain tissue"  # the prompt's structure, not the whole prompt
    assert seg.SegmentSequence[0].SegmentAlgorithmName == t1_case_model_name(service, t1_case.id)
    # Frame i references the SOP instance of the source slice it lies on (by position, not file order).
    sources = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in paths}
    for frame in seg.PerFrameFunctionalGroupsSequence:
        uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        assert uid in sources
        position = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        source_position = [float(v) for v in pydicom.dcmread(sources[uid], stop_before_pixels=True)
                           .ImagePositionPatient]
        assert np.allclose(position, source_position, atol=1e-3)
    loaded = service.store.load_volume(t1_case.id)
    read_back = read_dicom_seg_mask(seg_path, loaded)
    expected = loaded.from_display(cube, plane=geometry.plane)
    assert np.array_equal(read_back, expected)
    # Same voxels through the NIfTI of the same export, and no patient identifiers in the SEG.
    mask_nifti = np.asarray(nib.load(str(out / entry["files"]["mask"])).dataobj) > 0
    assert np.array_equal(mask_nifti, expected)
    text = seg_path.read_bytes()
    for value in (b"Doe^Jane", b"ID-1234"):
        assert value not in text
    # The stored de-identified headers keep no identifier either.
    stored = (service.store.files_dir / "volumes").glob("*.json")
    assert all(b"Doe^Jane" not in path.read_bytes() for path in stored)


def t1_case_model_name(service, case_id):
    """The model that predicted the case: the SEG's algorithm identification names it."""
    return str(service.store.latest_correction(case_id)["model_id"]).split("@")[0]


def test_volume_saved_mask_maps_to_world_space_like_the_scan(service):
    """A mask saved on display slices lands on the voxels of those slices in the file grid."""
    volume = small_t1()
    result = service.segment_volume(volume, PROMPT, annotator="ann", num_samples=2)
    geometry = service.store.volume_geometry(result.case.id)
    cube = painted_cube(geometry)
    service.save(result.case.id, cube, annotator="ann", reviewed_slices=[2, 3, 4])
    row = service.store.latest_correction(result.case.id)
    mosaic = service.store.load_mask(row["mask_path"])
    assert np.array_equal(volume_files.unmosaic(mosaic, geometry), cube)
    # World coordinates of the cube's voxels, from the display affine and from the file grid, agree.
    display_affine = volume.display_affine(geometry.plane)
    world_display = nib.affines.apply_affine(display_affine, np.argwhere(cube))
    file_mask = volume.from_display(cube, plane=geometry.plane)
    world_file = nib.affines.apply_affine(volume.affine, np.argwhere(file_mask))
    assert np.allclose(np.sort(world_display, axis=0), np.sort(world_file, axis=0))


def _on_file_grid(cube: np.ndarray, original, plane: str) -> np.ndarray:
    """A display-space mask taken to the file's voxel grid by nibabel's own reorientation."""
    from medclipseg.io.volumes import ScanVolume

    stored = ScanVolume(array=np.asarray(original.dataobj, dtype=np.float32), affine=original.affine)
    display_image = nib.Nifti1Image(cube.astype(np.uint8), stored.display_affine(plane))
    back = display_image.as_reoriented(nib.orientations.ornt_transform(
        nib.orientations.io_orientation(display_image.affine), nib.orientations.io_orientation(original.affine)))
    return np.asarray(back.dataobj) > 0


def test_a_volume_with_two_raters_exports_each_raters_mask_on_the_scans_grid(tmp_path, service):
    image = small_t1().nifti_image()
    ornt = nib.orientations.ornt_transform(nib.orientations.io_orientation(image.affine),
                                           nib.orientations.axcodes2ornt(("P", "L", "I")))
    source = tmp_path / "scans"
    source.mkdir()
    nib.save(image.as_reoriented(ornt), str(source / "subject1.nii.gz"))
    service.store.set_project_settings(raters_per_case=2)
    report = service.ingest(source, prompt=PROMPT, num_samples=2)
    case = service.store.get_case(report.volumes[0])
    geometry = service.store.volume_geometry(case.id)
    first = painted_cube(geometry)
    second = first.copy()
    second[2:5, 6:12, :] = False  # the second rater leaves a strip out
    service.save(case.id, first, annotator="ann", reviewed_slices=[2, 3, 4])
    service.save(case.id, second, annotator="bea", reviewed_slices=[2, 3, 4])

    out = tmp_path / "export"
    result = export_dataset(service.store, out, volume_format="nifti", val_fraction=0.0, test_fraction=0.0)
    entry = next(e for e in json.loads(result.manifest_path.read_text())["cases"] if e["case_id"] == case.id)
    assert entry["label_kind"] == "consensus (STAPLE)" and set(entry["raters"]) == {"ann", "bea"}
    original = nib.load(str(source / "subject1.nii.gz"))
    for rater, cube in (("ann", first), ("bea", second)):
        written = entry["raters"][rater]
        assert len(written["slices"]) == 3 and all((out / path).is_file() for path in written["slices"])
        mask_image = nib.load(str(out / written["mask"]))
        assert mask_image.shape == original.shape and np.allclose(mask_image.affine, original.affine, atol=1e-5)
        assert np.array_equal(np.asarray(mask_image.dataobj) > 0, _on_file_grid(cube, original, geometry.plane))
    dice = 2 * np.logical_and(first, second).sum() / (first.sum() + second.sum())
    assert entry["agreement"]["mean_pairwise_dice"] == pytest.approx(dice)
    paths = [path for written in entry["raters"].values() for path in (*written["slices"], written["mask"])]
    assert not [path for path in paths if "ann" in path or "bea" in path]  # user names stay out of file names
