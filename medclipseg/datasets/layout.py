"""The authors' dataset folder layout and prompt tables, validated with precise errors.

Layout::

    <DATASET>/Train_Folder/img/*.png     <DATASET>/Train_Folder/label/*.png
    <DATASET>/Val_Folder/...             <DATASET>/Test_Folder/...
    <DATASET>/Prompts_Folder/Train_text.xlsx, Val_text.xlsx, Test_text_<design>.xlsx,
                             Train_text_<pct>.xlsx, Val_text_<pct>.xlsx

Every prompt table has the columns ``Image``, ``Description`` and ``Ground Truth`` (file
names inside ``img/`` and ``label/``; the header match ignores case, spaces and underscores).
Tables may be ``.xlsx`` (first sheet, header row) or ``.csv`` (UTF-8, a BOM is tolerated);
when both exist the ``.xlsx`` is used. Fully blank rows are ignored and cells are stripped.
Row numbers in messages are spreadsheet row numbers (the header is row 1).
"""

from __future__ import annotations

import csv
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

__all__ = [
    "SPLITS",
    "SPLIT_FOLDERS",
    "PROMPTS_FOLDER",
    "IMAGE_FOLDER",
    "LABEL_FOLDER",
    "PROMPT_DESIGNS",
    "DATA_PERCENTAGES",
    "TABLE_COLUMNS",
    "TABLE_SUFFIXES",
    "LayoutError",
    "Sample",
    "table_stems",
    "find_prompt_table",
    "read_prompt_table",
    "load_split",
    "write_prompt_table",
    "describe_layout",
]

SPLITS = ("train", "val", "test")
SPLIT_FOLDERS = {"train": "Train_Folder", "val": "Val_Folder", "test": "Test_Folder"}
PROMPTS_FOLDER = "Prompts_Folder"
IMAGE_FOLDER = "img"
LABEL_FOLDER = "label"
PROMPT_DESIGNS = (
    "original",
    "contradictory",
    "missing_location",
    "overdescriptive",
    "underdescriptive",
)
# The subsets the authors publish; 100 is the plain Train_text / Val_text table.
DATA_PERCENTAGES = (10, 25, 50, 100)
TABLE_COLUMNS = ("Image", "Description", "Ground Truth")
TABLE_SUFFIXES = (".xlsx", ".csv")  # in order of preference

_MAX_LISTED_PROBLEMS = 20

PathLike = Union[str, os.PathLike]


class LayoutError(ValueError):
    """The dataset folder or a prompt table does not follow the expected layout.

    ``problems`` holds one line per problem found (the message shows the first ones).
    """

    def __init__(self, message: str, problems: Optional[Sequence[str]] = None):
        super().__init__(message)
        self.problems = list(problems) if problems else [message]


@dataclass
class Sample:
    """One image, its label mask and its text prompt."""

    image_path: Path
    mask_path: Path
    prompt: str
    image_name: str


# --------------------------------------------------------------------------------------
# table names


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise LayoutError(f"Unknown split {split!r}; expected one of {', '.join(SPLITS)}.")
    return split


def _check_design(design: str) -> str:
    if design not in PROMPT_DESIGNS:
        raise LayoutError(
            f"Unknown prompt design {design!r}; expected one of {', '.join(PROMPT_DESIGNS)}."
        )
    return design


def _check_pct(pct: Any) -> int:
    if isinstance(pct, bool) or not isinstance(pct, int) or not 1 <= pct <= 100:
        raise LayoutError(
            f"Data percentage must be an integer from 1 to 100 (usually one of "
            f"{', '.join(map(str, DATA_PERCENTAGES))}), got {pct!r}."
        )
    return pct


def table_stems(split: str, *, design: str = "original", pct: int = 100) -> list:
    """Table names (without suffix) looked for, in order, for a split/design/percentage.

    Train and val use ``Train_text`` / ``Val_text`` (``_<pct>`` for a subset); test uses
    ``Test_text_<design>``, falling back to ``Test_text`` for the original design. ``pct`` is
    ignored for the test split.
    """
    _check_split(split)
    _check_design(design)
    _check_pct(pct)
    if split == "test":
        stems = [f"Test_text_{design}"]
        if design == "original":
            stems.append("Test_text")
        return stems
    base = "Train_text" if split == "train" else "Val_text"
    return [base] if pct == 100 else [f"{base}_{pct}"]


def _entries(folder: Path) -> list:
    try:
        return sorted(os.listdir(folder))
    except OSError:
        return []


def find_prompt_table(prompts_folder: PathLike, stems: Sequence[str]) -> Optional[Path]:
    """First existing ``<stem>.xlsx`` / ``<stem>.csv`` (exact name first, then ignoring case)."""
    folder = Path(prompts_folder)
    entries = _entries(folder)
    by_lower = {}
    for entry in entries:
        by_lower.setdefault(entry.lower(), entry)
    for stem in stems:
        for suffix in TABLE_SUFFIXES:
            wanted = stem + suffix
            if wanted in entries:
                return folder / wanted
            if wanted.lower() in by_lower:
                return folder / by_lower[wanted.lower()]
    return None


# --------------------------------------------------------------------------------------
# reading tables


def _cell_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # an image named 12 stored as a number
    return str(value).strip()


def _normalise_header(name: str) -> str:
    return re.sub(r"[\s_]+", " ", name.strip().lower())


def _read_xlsx_rows(path: Path) -> list:
    try:
        import openpyxl
    except ImportError as exc:  # pragma: no cover - openpyxl is a dependency
        raise LayoutError(f"Reading {path.name} needs the 'openpyxl' package.") from exc
    try:
        workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:
        raise LayoutError(f"Could not read the spreadsheet {path}: {exc}") from exc
    try:
        if not workbook.worksheets:
            return []
        sheet = workbook.worksheets[0]
        return [
            (row_number, [_cell_text(v) for v in values])
            for row_number, values in enumerate(sheet.iter_rows(values_only=True), start=1)
        ]
    finally:
        workbook.close()


def _read_csv_rows(path: Path) -> list:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LayoutError(f"{path} is not UTF-8 text (save the CSV as UTF-8).") from exc
    except OSError as exc:
        raise LayoutError(f"Could not read {path}: {exc}") from exc
    first_line = text.split("\n", 1)[0]
    delimiter = ","
    if "," not in first_line:
        for candidate in (";", "\t"):
            if candidate in first_line:
                delimiter = candidate
                break
    reader = csv.reader(text.splitlines(keepends=True), delimiter=delimiter)
    rows = []
    for values in reader:
        rows.append((reader.line_num, [_cell_text(v) for v in values]))
    return rows


def _raw_rows(path: Path) -> list:
    if path.suffix.lower() == ".xlsx":
        return _read_xlsx_rows(path)
    if path.suffix.lower() == ".csv":
        return _read_csv_rows(path)
    raise LayoutError(f"Unsupported prompt table {path.name}: use .xlsx or .csv.")


def read_prompt_table(path: PathLike, *, display_name: Optional[str] = None) -> list:
    """Rows of a prompt table as dicts with keys ``Image``, ``Description``, ``Ground Truth``
    and ``row`` (spreadsheet row number). Blank rows are skipped; cells are stripped.

    Raises ``LayoutError`` when the file cannot be read or a required column is missing.
    """
    path = Path(path)
    shown = display_name or str(path)
    rows = [(number, values) for number, values in _raw_rows(path) if any(values)]
    if not rows:
        raise LayoutError(f"{shown} is empty (no header row with {', '.join(TABLE_COLUMNS)}).")
    header_row, header = rows[0]
    positions = {}
    for index, name in enumerate(header):
        positions.setdefault(_normalise_header(name), index)
    missing = [c for c in TABLE_COLUMNS if _normalise_header(c) not in positions]
    if missing:
        found = ", ".join(repr(h) for h in header if h) or "none"
        raise LayoutError(
            f"{shown}: missing column(s) {', '.join(repr(m) for m in missing)} in the header "
            f"(row {header_row}); columns found: {found}."
        )
    records = []
    for number, values in rows[1:]:
        record = {"row": number}
        for column in TABLE_COLUMNS:
            index = positions[_normalise_header(column)]
            record[column] = values[index] if index < len(values) else ""
        records.append(record)
    return records


# --------------------------------------------------------------------------------------
# loading a split


def _require_folder(folder: Path, shown: str, root: Path, hint: str = "") -> None:
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "not found"
        raise LayoutError(f"{shown} {what} in dataset folder '{root}'.{hint}")


def _is_plain_name(name: str) -> bool:
    return name not in (".", "..") and "/" not in name and "\\" not in name


def _missing_file_note(name: str, lowered: dict) -> str:
    """Hint when the file exists with different letter case."""
    alternative = lowered.get(name.lower())
    if alternative and alternative != name:
        return f" (a file named '{alternative}' exists; names are case-sensitive)"
    return ""


def _file_problem(kind: str, name: str, names: set, lowered: dict, folder_shown: str) -> Optional[str]:
    """What is wrong with a table cell naming an image or label file; None when the file is there."""
    if not _is_plain_name(name):
        return f"{kind} '{name}' must be a plain file name"
    if name not in names:
        return f"{kind} '{name}' not found in {folder_shown}{_missing_file_note(name, lowered)}"
    return None


def _raise_problems(shown_table: str, problems: list) -> None:
    if not problems:
        return
    lines = [f"{shown_table} {problem}" for problem in problems]
    if len(lines) == 1:
        raise LayoutError(lines[0], lines)
    listed = lines[:_MAX_LISTED_PROBLEMS]
    more = len(lines) - len(listed)
    message = f"{len(lines)} problems in {shown_table}:\n  " + "\n  ".join(listed)
    if more:
        message += f"\n  ... and {more} more"
    raise LayoutError(message, lines)


def load_split(
    root: PathLike, split: str, *, design: str = "original", pct: int = 100
) -> list:
    """Samples of one split, validated against the files on disk.

    ``split`` is one of ``SPLITS``; ``design`` (test only) one of ``PROMPT_DESIGNS``; ``pct``
    (train/val only) selects ``Train_text_<pct>`` / ``Val_text_<pct>`` (100 = the full table).
    Raises ``LayoutError`` naming the folder, table, column or row that is wrong.
    """
    root = Path(root)
    stems = table_stems(split, design=design, pct=pct)
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "not found"
        raise LayoutError(f"Dataset folder '{root}' {what}.")

    split_folder = SPLIT_FOLDERS[split]
    hint = f" Expected {split_folder}/{IMAGE_FOLDER} and {split_folder}/{LABEL_FOLDER}."
    _require_folder(root / split_folder, split_folder, root, hint)
    image_folder_shown = f"{split_folder}/{IMAGE_FOLDER}"
    label_folder_shown = f"{split_folder}/{LABEL_FOLDER}"
    image_dir = root / split_folder / IMAGE_FOLDER
    label_dir = root / split_folder / LABEL_FOLDER
    _require_folder(image_dir, image_folder_shown, root)
    _require_folder(label_dir, label_folder_shown, root)
    _require_folder(root / PROMPTS_FOLDER, PROMPTS_FOLDER, root)

    table = find_prompt_table(root / PROMPTS_FOLDER, stems)
    if table is None:
        looked_for = ", ".join(stem + suffix for stem in stems for suffix in TABLE_SUFFIXES)
        raise LayoutError(
            f"No prompt table for split '{split}' in {PROMPTS_FOLDER} of '{root}': "
            f"looked for {looked_for}."
        )
    shown_table = f"{PROMPTS_FOLDER}/{table.name}"
    records = read_prompt_table(table, display_name=shown_table)
    if not records:
        raise LayoutError(f"{shown_table} has a header but no rows.")

    image_names = set(_entries(image_dir))
    label_names = set(_entries(label_dir))
    image_lower = {n.lower(): n for n in image_names}
    label_lower = {n.lower(): n for n in label_names}

    problems: list = []
    first_row_of: dict = {}
    samples: list = []
    for record in records:
        row = record["row"]
        image_name = record["Image"]
        label_name = record["Ground Truth"]
        prompt = record["Description"]
        row_problems = []
        cells = (("Image", image_name), ("Description", prompt), ("Ground Truth", label_name))
        for column, value in cells:
            if not value:
                row_problems.append(f"row {row}: empty '{column}' cell")
        if image_name:
            problem = _file_problem("image", image_name, image_names, image_lower, image_folder_shown)
            if problem:
                row_problems.append(f"row {row}: {problem}")
            if image_name in first_row_of:
                row_problems.append(
                    f"row {row}: duplicate image name '{image_name}' "
                    f"(already listed in row {first_row_of[image_name]})"
                )
            else:
                first_row_of[image_name] = row
        if label_name:
            problem = _file_problem("label", label_name, label_names, label_lower, label_folder_shown)
            if problem:
                row_problems.append(f"row {row}: {problem}")
        if row_problems:
            problems.extend(row_problems)
            continue
        samples.append(
            Sample(
                image_path=image_dir / image_name,
                mask_path=label_dir / label_name,
                prompt=prompt,
                image_name=image_name,
            )
        )
    _raise_problems(shown_table, problems)
    return samples


# --------------------------------------------------------------------------------------
# writing tables


def _row_values(row: Mapping[str, Any], index: int) -> list:
    by_normalised = {_normalise_header(str(k)): v for k, v in row.items()}
    missing = [c for c in TABLE_COLUMNS if _normalise_header(c) not in by_normalised]
    if missing:
        raise ValueError(f"row {index}: missing key(s) {', '.join(repr(m) for m in missing)}")
    cells = [by_normalised[_normalise_header(c)] for c in TABLE_COLUMNS]
    return ["" if value is None else str(value) for value in cells]


def write_prompt_table(path: PathLike, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write rows (dicts with ``Image``, ``Description``, ``Ground Truth``) as .xlsx or .csv.

    The format follows the suffix. CSV is written as plain UTF-8. Text that starts with '='
    is stored as text in .xlsx, never as a formula. The file is replaced atomically.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise ValueError(f"Unsupported table format {path.suffix!r}: use .xlsx or .csv.")
    values = [_row_values(row, index) for index, row in enumerate(rows, start=1)]
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix, dir=path.parent)
    os.close(handle)
    try:
        if suffix == ".csv":
            with open(temp_name, "w", encoding="utf-8", newline="") as stream:
                writer = csv.writer(stream)
                writer.writerow(TABLE_COLUMNS)
                writer.writerows(values)
        else:
            import openpyxl

            workbook = openpyxl.Workbook()
            sheet = workbook.active
            for row_number, cells in enumerate([list(TABLE_COLUMNS)] + values, start=1):
                for column_number, text in enumerate(cells, start=1):
                    cell = sheet.cell(row=row_number, column=column_number, value=text)
                    cell.data_type = "s"  # keep '=...' prompts as text, not formulas
            workbook.save(temp_name)
        os.replace(temp_name, path)
    except BaseException:
        if os.path.exists(temp_name):
            os.unlink(temp_name)
        raise
    return path


# --------------------------------------------------------------------------------------
# summary


def describe_layout(root: PathLike) -> dict:
    """Counts per split and the prompt tables present, for CLI messages (never raises for
    missing parts, only for a missing dataset folder)."""
    root = Path(root)
    if not root.is_dir():
        raise LayoutError(f"Dataset folder '{root}' not found.")
    splits = {}
    for split in SPLITS:
        folder = root / SPLIT_FOLDERS[split]
        images = [n for n in _entries(folder / IMAGE_FOLDER) if not n.startswith(".")]
        labels = [n for n in _entries(folder / LABEL_FOLDER) if not n.startswith(".")]
        splits[split] = {
            "folder": SPLIT_FOLDERS[split],
            "exists": folder.is_dir(),
            "images": len(images),
            "labels": len(labels),
        }
    prompts = root / PROMPTS_FOLDER
    tables = [
        n
        for n in _entries(prompts)
        if Path(n).suffix.lower() in TABLE_SUFFIXES and not n.startswith((".", "~$"))
    ]
    stems = {Path(n).stem.lower() for n in tables}
    designs = [
        d
        for d in PROMPT_DESIGNS
        if f"test_text_{d}" in stems or (d == "original" and "test_text" in stems)
    ]

    def percentages(base: str) -> list:
        found = {100} if base in stems else set()
        for stem in stems:
            match = re.fullmatch(rf"{base}_(\d+)", stem)
            if match and 1 <= int(match.group(1)) <= 100:
                found.add(int(match.group(1)))
        return sorted(found)

    return {
        "root": str(root),
        "prompts_folder_exists": prompts.is_dir(),
        "splits": splits,
        "tables": tables,
        "test_designs": designs,
        "train_percentages": percentages("train_text"),
        "val_percentages": percentages("val_text"),
    }
