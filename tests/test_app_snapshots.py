"""A Space's restart, played on this machine: the app snapshots its database into a bucket folder
(or a Hub dataset) while it runs and when it stops, and a fresh container (an empty disk) starts
from that snapshot."""
from __future__ import annotations

import numpy as np
import pytest

from app_support import app_server, demo_database, fill_queue
from medclipseg.annotation.store import AnnotationStore

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402


@pytest.fixture(params=["bucket folder", "hub dataset"])
def snapshot_place(request, tmp_path):
    """(MEDCLIPSEG_SNAPSHOT_DIR, the rest of the server's environment): a mounted bucket, or a Hub dataset
    on a small Hub on 127.0.0.1 (tests/hub_stand_in.py) written by huggingface_hub's own client."""
    if request.param == "bucket folder":
        yield str(tmp_path / "bucket"), {}
        return
    from hub_stand_in import HubStandIn

    with HubStandIn() as hub:
        yield "hf://datasets/team/space-snapshots", {"HF_ENDPOINT": hub.endpoint, "HF_TOKEN": "hf_test_token",
                                                     "HF_HUB_OFFLINE": "0"}


def test_a_restarted_container_restores_every_acknowledged_save(tmp_path, snapshot_place):
    import cv2

    bucket, hub_env = snapshot_place
    first_disk = tmp_path / "container-1" / "annotations.db"
    store = demo_database(first_disk)
    fill_queue(store, 4)
    store.close()
    mask = np.zeros((48, 64), np.uint8)
    mask[5:25, 8:40] = 255
    cv2.imwrite(str(tmp_path / "mask.png"), mask)
    env = {"MEDCLIPSEG_SNAPSHOT_DIR": bucket, "MEDCLIPSEG_SNAPSHOT_SECONDS": "3600", **hub_env}
    saved = []
    with app_server(first_disk, env=env) as (url, _process):
        client = Client(url, verbose=False)
        for _ in range(3):
            case, _image = client.predict("alice", "", api_name="/next_case")
            answer = client.predict(case["case_id"], handle_file(str(tmp_path / "mask.png")), "alice", "corrected",
                                    api_name="/save_correction")
            saved.append((answer["case_id"], answer["version"]))
    # The server stopped (SIGTERM, as a Space restart does): its last snapshot holds every save.
    second_disk = tmp_path / "container-2" / "annotations.db"
    with app_server(second_disk, env=env) as (url, _process):
        log = (second_disk.parent / next(p.name for p in second_disk.parent.glob("server-*.log"))).read_text()
        assert "Restored the annotation database from" in log and bucket in log
        client = Client(url, verbose=False)
        case, _image = client.predict("bob", "", api_name="/next_case")
        assert case["case_id"] not in {case_id for case_id, _ in saved}  # the three stay reviewed
    with AnnotationStore(second_disk) as restored:
        rows = restored.corrections()
        assert sorted((row["case_id"], row["version"]) for row in rows) == sorted(saved)
        for row in rows:
            np.testing.assert_array_equal(restored.load_mask(row["mask_path"]), mask > 0)
