"""Screenshots of a volume case open in the mask editor, for the README: docs/images/volume-case-1440.png
(1440 x 900) and docs/images/volume-case-800.png (800 x 1000).

They are taken by the browser test that reviews a scan end to end (tests/test_app_volume_browser.py:
a crop of the MRIcron T1 ingested as NIfTI, scrolled, painted on one slice and saved), with
MEDCLIPSEG_SCREENSHOTS pointing here; it needs Debian's chromium and the mricron-data templates.

    .venv/bin/python scripts/screenshots_volume.py [--out docs/images]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEST = "tests/test_app_volume_browser.py::test_scroll_paint_come_back_reload_save_and_export_nifti"
NAMES = ("volume-case-1440.png", "volume-case-800.png")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images", help="folder for the PNG files")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    environment = dict(os.environ, MEDCLIPSEG_SCREENSHOTS=str(out), MEDCLIPSEG_REQUIRE_BROWSER="1")
    code = subprocess.call([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", TEST],
                           cwd=str(ROOT), env=environment)
    if code == 0:
        for name in NAMES:
            print(out / name)
    return code


if __name__ == "__main__":
    sys.exit(main())
