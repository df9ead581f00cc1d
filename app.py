"""MedCLIPSeg Annotator: the entry point Hugging Face Spaces (and ``bash scripts/run.sh``) runs.

Everything lives in :mod:`medclipseg.app`; settings are listed in :mod:`medclipseg.settings`.
"""
from medclipseg.app import main

if __name__ == "__main__":
    main()
