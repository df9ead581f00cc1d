"""`medclipseg.annotation.diversity` and the diverse queue orders built on it."""
from __future__ import annotations

import numpy as np
import pytest

from annotation_support import prediction, store  # noqa: F401  (fixture)
from medclipseg.annotation import diversity
from medclipseg.annotation.diversity import QueueCase, image_descriptor, pick, similarity_matrix, source_and_slice


def scan_slice(volume: int, z: int, size: int = 48) -> np.ndarray:
    """Slice z of a smooth synthetic 'scan': a low-frequency pattern of its own (scans differ a lot)
    and a blob that grows slowly with z (neighbouring slices differ a little)."""
    import cv2

    rng = np.random.default_rng(1000 + volume)
    pattern = cv2.resize(rng.uniform(0, 120, size=(4, 4)), (size, size), interpolation=cv2.INTER_CUBIC)
    yy, xx = np.mgrid[:size, :size]
    radius = 4 + 0.5 * z
    blob = 100 * np.exp(-((yy - size / 2) ** 2 + (xx - size / 2) ** 2) / (2 * radius ** 2))
    grey = np.clip(pattern + blob + 10, 0, 255).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def as_vector(descriptor: bytes) -> np.ndarray:
    return np.frombuffer(descriptor, dtype=np.float16).astype(np.float64)


# ------------------------------------------------------------------------------ the fingerprint


def test_descriptor_is_the_centred_unit_16x16_area_average():
    rng = np.random.default_rng(0)
    grey = rng.uniform(0, 255, size=(64, 96))
    picture = np.repeat(grey[:, :, None], 3, axis=2).astype(np.uint8)
    # Independent computation: 16 x 16 blocks of 4 x 6 pixels averaged, mean removed, unit length.
    blocks = picture[:, :, 0].astype(np.float64).reshape(16, 4, 16, 6).mean(axis=(1, 3))
    expected = (blocks - blocks.mean()).ravel()
    expected /= np.linalg.norm(expected)
    np.testing.assert_allclose(as_vector(image_descriptor(picture)), expected, atol=2e-3)
    assert len(image_descriptor(picture)) == diversity.DESCRIPTOR_BYTES


def test_descriptor_ignores_size_and_contrast_but_not_content():
    base = scan_slice(0, 10, size=64)
    same_bigger = np.repeat(np.repeat(base, 2, axis=0), 2, axis=1)
    brighter = np.clip(base.astype(np.int32) * 2 // 3 + 30, 0, 255).astype(np.uint8)
    other_scan = scan_slice(5, 10, size=64)
    d = as_vector(image_descriptor(base))
    assert as_vector(image_descriptor(same_bigger)) @ d > 0.99
    assert as_vector(image_descriptor(brighter)) @ d > 0.99
    assert as_vector(image_descriptor(other_scan)) @ d < 0.7
    assert not as_vector(image_descriptor(np.full((20, 20, 3), 77, np.uint8))).any()  # flat: all zeros


@pytest.mark.parametrize("name, expected", [
    ("caudate_z071.png", ("caudate_z#", 71)),
    ("IM-0001-0042.dcm", ("IM-0001-#", 42)),
    ("series/ct 12 axial.nii.gz", ("ct # axial", 12)),
    ("photo.jpg", ("photo", None)),
    ("", ("", None)),
])
def test_source_and_slice_from_file_names(name, expected):
    assert source_and_slice(name) == expected


def test_similarity_is_the_documented_weighted_sum():
    rng = np.random.default_rng(3)
    pictures = [rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8) for _ in range(4)]
    cases = [QueueCase(i, prompt, image_descriptor(p), source, z)
             for i, (p, prompt, source, z) in enumerate(zip(pictures, ["liver", "liver", "kidney", "liver"],
                                                             ["a#", "a#", "a#", "b#"], [1, 4, 30, 2]))]
    got = similarity_matrix(cases, cases)
    for i, a in enumerate(cases):
        for j, b in enumerate(cases):
            cosine = max(0.0, float(as_vector(a.descriptor) @ as_vector(b.descriptor)))
            near = a.source_key == b.source_key and abs(a.slice_index - b.slice_index) <= 5
            expected = 0.6 * min(cosine, 1.0) + 0.25 * (a.prompt == b.prompt) + 0.15 * near
            assert got[i, j] == pytest.approx(expected, abs=2e-3)
    assert similarity_matrix([], cases).shape == (0, 4)


# ------------------------------------------------------------------------------ picking


def test_pick_serves_the_top_case_when_nothing_is_taken():
    candidates = [QueueCase(i, "p", image_descriptor(scan_slice(0, i)), "s#", i, score=1.0 - i / 10) for i in range(5)]
    assert pick(candidates, []) == 0


def test_pick_skips_a_near_duplicate_of_a_taken_case():
    taken = [QueueCase(99, "liver", image_descriptor(scan_slice(0, 20)), "a#", 20, score=0.9)]
    candidates = [
        QueueCase(1, "liver", image_descriptor(scan_slice(0, 21)), "a#", 21, score=0.90),   # the next slice
        QueueCase(2, "liver", image_descriptor(scan_slice(0, 22)), "a#", 22, score=0.88),
        QueueCase(3, "kidney", image_descriptor(scan_slice(4, 5)), "b#", 5, score=0.80),    # another scan, prompt
        QueueCase(4, "liver", image_descriptor(scan_slice(6, 5)), "c#", 5, score=0.20),
    ]
    # value = 0.4 * relevance - 0.6 * max similarity, computed here from the documented formula.
    relevance = 1.0 - np.arange(4) / 4
    redundancy = similarity_matrix(candidates, taken).max(axis=1)
    assert pick(candidates, taken) == int(np.argmax(0.4 * relevance - 0.6 * redundancy)) == 2
    assert pick(candidates, taken, diversity=0.0) == 0  # no diversity: the base order


# ------------------------------------------------------------------------------ the queue


def fill_three_scans(store, slices: int = 8) -> dict:
    """Three 'scans' of `slices` neighbouring slices each; scan A's slices are the most uncertain,
    then B's, then C's, so uncertainty alone serves all of A first. Returns case id -> scan."""
    scan_of = {}
    for volume, (name, prompt, base) in enumerate((("a", "liver", 0.9), ("b", "liver", 0.6), ("c", "kidney", 0.3))):
        for z in range(slices):
            case = store.add_case(scan_slice(volume, z), prompt=prompt, original_name=f"{name}_slice_{z:03d}.png")
            score = base - 0.01 * z
            store.add_prediction(case.id, prediction((48, 48), seed=z, prompt=prompt,
                                                     scores={"band_entropy": score}))
            scan_of[case.id] = name
    return scan_of


def serve_and_label(store, acquisition: str, count: int) -> list:
    served = []
    for _ in range(count):
        case = store.next_case("alice", acquisition=acquisition)
        served.append(case.id)
        store.save_correction(case.id, np.zeros((48, 48), bool), annotator="alice")
    return served


def test_uncertainty_alone_serves_one_scan_and_the_diverse_order_spreads(store):  # noqa: F811
    scan_of = fill_three_scans(store)
    plain = [scan_of[i] for i in serve_and_label(store, "band_entropy", 3)]
    assert plain == ["a", "a", "a"]


def test_diverse_order_serves_each_scan_before_a_second_slice_of_one(store):  # noqa: F811
    scan_of = fill_three_scans(store)
    served = serve_and_label(store, "band_entropy_diverse", 3)
    assert [scan_of[i] for i in served] == ["a", "b", "c"]
    assert served[0] == min(i for i, s in scan_of.items() if s == "a")  # the most uncertain case first


def test_random_diverse_also_spreads(store):  # noqa: F811
    scan_of = fill_three_scans(store)
    assert sorted(scan_of[i] for i in serve_and_label(store, "random_diverse", 3)) == ["a", "b", "c"]


def test_cases_leased_to_others_count_as_taken(store):  # noqa: F811
    """Two annotators working at once are not both served slices of one scan."""
    scan_of = fill_three_scans(store)
    first = store.next_case("alice", acquisition="band_entropy_diverse")
    second = store.next_case("bob", acquisition="band_entropy_diverse")
    assert scan_of[first.id] == "a" and scan_of[second.id] != "a"
    # Asking again re-serves one's own case, and leases stay exclusive.
    assert store.next_case("alice", acquisition="band_entropy_diverse").id == first.id
    assert store.next_case("bob", acquisition="band_entropy_diverse").id == second.id


def test_diverse_order_serves_everything_once(store):  # noqa: F811
    scan_of = fill_three_scans(store, slices=4)
    served = serve_and_label(store, "band_entropy_diverse", len(scan_of))
    assert sorted(served) == sorted(scan_of)
    assert store.next_case("alice", acquisition="band_entropy_diverse") is None
