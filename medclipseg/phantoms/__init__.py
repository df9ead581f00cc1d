"""Synthetic, medical-looking phantoms with segmentation targets and text prompts.

Five modalities (the keys of ``MODALITIES``): breast ultrasound, brain MRI, dermoscopy,
colonoscopy and chest X-ray. Every image has 0 to 3 targets (lesions, tumours, polyps,
opacities) with attributes in the vocabularies of ``vocabulary``, and every target is described
by prompts in the authors' style and in the five prompt designs of ``medclipseg.datasets.layout``.
Everything is numpy/OpenCV and deterministic by seed.

Modules, by concern:

    vocabulary            attribute vocabularies, size bins, target-count and image-size priors
    raster                array helpers (noise, blurs, mask windows, morphology)
    geometry              targets: outlines, sizes, locations, placement
    modalities/<name>     one module per modality: anatomy, target appearance, rendering
    shift                 acquisition variation, the shifted range and its artefacts
    prompts               prompt vocabulary, the five designs, captions, token counting
    generate              generate_phantom and the seeds of a data set's images
    writer                write_dataset and the phantoms.json manifest (written and read)

``medclipseg phantoms`` (``medclipseg.cli``) writes a data set from the command line.
"""
from __future__ import annotations

from medclipseg.datasets.layout import PROMPT_DESIGNS
from medclipseg.phantoms.generate import Phantom, derive_image_seed, generate_phantom
from medclipseg.phantoms.geometry import Target
from medclipseg.phantoms.prompts import MAX_PROMPT_TOKENS, TOKENIZER_SOURCE, count_tokens
from medclipseg.phantoms.shift import Shift, sample_shift
from medclipseg.phantoms.vocabulary import (
    CATEGORIES,
    IMAGE_SIZE_RANGE,
    LOCATION_WORDS,
    LOCATIONS,
    MODALITIES,
    SHAPES,
    SIZE_BINS,
    SIZES,
    TARGET_COUNT_PROBS,
)
from medclipseg.phantoms.writer import (
    GENERATOR,
    MANIFEST_FILE,
    SUBSET_PERCENTAGES,
    VERSION,
    read_manifest,
    records_by_row,
    write_dataset,
)

__all__ = [
    "MODALITIES",
    "PROMPT_DESIGNS",
    "SIZES",
    "SHAPES",
    "LOCATIONS",
    "CATEGORIES",
    "LOCATION_WORDS",
    "SIZE_BINS",
    "TARGET_COUNT_PROBS",
    "IMAGE_SIZE_RANGE",
    "SUBSET_PERCENTAGES",
    "MAX_PROMPT_TOKENS",
    "TOKENIZER_SOURCE",
    "GENERATOR",
    "VERSION",
    "MANIFEST_FILE",
    "Target",
    "Shift",
    "Phantom",
    "sample_shift",
    "generate_phantom",
    "derive_image_seed",
    "count_tokens",
    "write_dataset",
    "read_manifest",
    "records_by_row",
]
