"""Screenshots of a volume case open in the mask editor, for the README: docs/images/volume-case-1440.png
(1440 x 900) and docs/images/volume-case-800.png (800 x 1000), and the three planes:
docs/images/volume-planes-1440.png and docs/images/volume-planes-800.png.

They are taken by the browser tests that review a scan end to end (tests/test_app_volume_browser.py:
a crop of the MRIcron T1 ingested as NIfTI, scrolled, painted on one slice and saved;
tests/test_app_volume_planes_browser.py: the same crop with 2.5 mm slices, painted in the sagittal
plane and seen in the axial), with MEDCLIPSEG_SCREENSHOTS pointing here; they need Debian's chromium
and the mricron-data templates.

    .venv/bin/python scripts/screenshots_volume.py [--out docs/images]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ("tests/test_app_volume_browser.py::test_scroll_paint_come_back_reload_save_and_export_nifti",
         "tests/test_app_volume_planes_browser.py::test_paint_in_the_sagittal_plane_and_see_it_in_the_axial")
NAMES = ("volume-case-1440.png", "volume-case-800.png", "volume-planes-1440.png", "volume-planes-800.png")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images", help="folder for the PNG files")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    environment = dict(os.environ, MEDCLIPSEG_SCREENSHOTS=str(out), MEDCLIPSEG_REQUIRE_BROWSER="1")
    code = subprocess.call([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", *TESTS],
                           cwd=str(ROOT), env=environment)
    if code == 0:
        for name in NAMES:
            print(out / name)
    return code


if __name__ == "__main__":
    sys.exit(main())
