"""Reading the dataset's CSV files: encoding, separator and header names.

pandas accepts a lot that silently changes a study: a duplicated header becomes `Age.1` (one
more feature; when it is the label, a copy of the answer), a `;`-separated file becomes one
column, a byte-order mark inside a name makes it another name, a row index written by
`to_csv(index=True)` becomes a feature called `Unnamed: 0`. Every CSV the DFU loader reads goes
through `read_table`, which refuses these with a message naming the file and the column, and
returns every cell as text (the caller decides what is a number: see features.py).
"""

from __future__ import annotations

import csv
import io
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

SEPARATORS = (",", ";", "\t", "|")  # tried in this order; the first that yields the required columns wins
SEPARATOR_NAMES = {",": "comma", ";": "semicolon", "\t": "tab", "|": "vertical bar"}
BOM = "\ufeff"


@dataclass
class Table:
    """A CSV file read as text: `frame` (every cell a str, '' when empty) and the separator used."""

    frame: pd.DataFrame
    path: Path
    separator: str
    short_rows: list = field(default_factory=list)  # 1-based data rows with fewer fields than the header


def clean_name(name) -> str:
    """A header name as medfusion compares it: surrounding spaces and every byte-order mark removed."""
    return str(name).replace(BOM, "").strip()


def utf8_error(path: Path, what: str, data: bytes, exc: UnicodeDecodeError) -> ValueError:
    start = int(exc.start) + (3 if data.startswith(b"\xef\xbb\xbf") else 0)
    line = data[:start].count(b"\n") + 1
    bad = data[start : start + 4]
    return ValueError(
        f"{what} file {str(path)!r} is not UTF-8: the byte(s) {bad!r} at line {line} (byte offset {start}) "
        "are not valid UTF-8. The file was probably saved in another encoding (Windows-1252/Latin-1 from Excel, "
        "or UTF-16). Re-save it as UTF-8 (Excel: 'CSV UTF-8'; or `iconv -f cp1252 -t utf-8 in.csv > out.csv`)."
    )


def _refuse_binary(data: bytes, path: Path, what: str) -> None:
    """A spreadsheet workbook saved under a .csv name, or NUL bytes (a damaged copy): never read as text."""
    for magic, kind in ((b"PK\x03\x04", "a zip archive, probably an Excel workbook (.xlsx)"),
                        (b"\xd0\xcf\x11\xe0", "an old Excel workbook (.xls)")):
        if data.startswith(magic):
            raise ValueError(f"{what} file {str(path)!r} is {kind}, not a CSV text file; open it and save it as "
                             "'CSV UTF-8 (comma delimited)'")
    nul = data.find(b"\x00")
    if nul >= 0 and not data.startswith((b"\xff\xfe", b"\xfe\xff")):  # UTF-16 is named by the UTF-8 check
        line, total = data[:nul].count(b"\n") + 1, data.count(b"\x00")
        raise ValueError(
            f"{what} file {str(path)!r} holds NUL bytes (first at line {line}, byte offset {nul}; {total} in all): "
            "the file is damaged (an interrupted copy or disk error), saved as UTF-16, or not text. Copy it again from "
            "the source, or re-save it as CSV UTF-8.")


def _header(text: str, sep: str) -> list[str]:
    try:
        return [clean_name(f) for f in next(csv.reader(io.StringIO(text, newline=None), delimiter=sep))]
    except (StopIteration, csv.Error):
        return []


def _excel_sep_line(text: str) -> tuple[str, str | None]:
    """Excel may write 'sep=;' as the first line: the separator to use, and the text without that line."""
    first, _, rest = text.partition("\n")
    m = re.fullmatch(r"\s*sep=(.)\s*", first.strip("\r"))
    return (rest, m.group(1)) if m and m.group(1) in SEPARATOR_NAMES else (text, None)


def _choose_separator(text: str, required) -> tuple[str, list[str]]:
    """The first separator whose header holds every required column; else the one giving most fields."""
    headers = {sep: _header(text, sep) for sep in SEPARATORS}
    for sep, names in headers.items():
        if all(c in names for c in required):
            return sep, names
    sep = max(SEPARATORS, key=lambda s: len(headers[s]))  # max keeps the first (comma) on ties
    return sep, headers[sep]


def _check_names(names: list[str], path: Path, what: str) -> None:
    dups = [n for n, k in Counter(names).items() if k > 1 and n]
    if dups:
        where = "; ".join(f"{n!r} is column " + " and ".join(str(i + 1) for i, m in enumerate(names) if m == n)
                          for n in dups[:5])
        raise ValueError(
            f"{what} file {str(path)!r} has {len(dups)} duplicated column name(s) (compared after removing "
            f"surrounding spaces and byte-order marks): {where}. pandas would rename the copy (e.g. 'Age.1') and "
            "it would become one more feature (a copy of the label would hand the forest the answer). Rename or "
            "delete the duplicated column(s)."
        )


def _rows(text: str, sep: str, width: int, path: Path, what: str) -> tuple[list, int, list]:
    """Data rows padded to the header's width, trailing all-empty rows dropped (counted), and the rows that had
    fewer fields than the header (1-based data row, line). A row with extra non-empty fields is an error: pandas
    would silently take its first field as a row index and shift every column. A last row with fewer fields and no
    line end means the file was cut short: an error too (its missing cells would be read as empty)."""
    rows, n_blank, short = [], 0, []
    reader = csv.reader(io.StringIO(text, newline=None), delimiter=sep)  # \r, \r\n and \n all end a line
    try:
        next(reader)
        for row in reader:
            if not row:  # an empty line (pandas skips these too, so row numbers agree)
                continue
            if len(row) > width:
                extra = [f for f in row[width:] if f.strip()]
                if extra:
                    raise ValueError(
                        f"{what} file {str(path)!r}: row {len(rows) + n_blank + 1} (line {reader.line_num}) has "
                        f"{len(row)} fields but the header has {width} (first extra value {extra[0]!r}); every "
                        f"row must have one value per header column ({SEPARATOR_NAMES[sep]}-separated)")
                row = row[:width]
            elif len(row) < width and any(f.strip() for f in row):
                short.append((len(rows) + 1, reader.line_num, len(row)))
            rows.append(row + [""] * (width - len(row)))
    except csv.Error as exc:
        raise ValueError(f"{what} file {str(path)!r} could not be parsed as CSV at line {reader.line_num}: {exc}") from None
    while rows and not any(f.strip() for f in rows[-1]):  # trailing ',,,,' rows a spreadsheet leaves
        rows.pop()
        n_blank += 1
    short = [s for s in short if s[0] <= len(rows)]
    if short and short[-1][0] == len(rows) and not text.endswith(("\n", "\r")):
        i, line, n = short[-1]
        raise ValueError(
            f"{what} file {str(path)!r} looks cut short: its last row {i} (line {line}) has {n} of the header's "
            f"{width} fields and no line end (last value {rows[-1][n - 1]!r}). Copy the file again, or complete or "
            "delete that row.")
    return rows, n_blank, short


def _warn_short(short: list, width: int, path: Path, log: logging.Logger | None) -> None:
    if short and log is not None:
        log.warning("%s: %d row(s) have fewer fields than the header's %d; their missing trailing cells are read "
                    "as empty (a cell deleted mid-row would shift the rest left: check them), e.g. %s", path.name,
                    len(short), width, ", ".join(f"row {i} (line {line}, {n} fields)" for i, line, n in short[:5]))


def read_table(path: Path, what: str, required=(), log: logging.Logger | None = None) -> Table:
    """Read a CSV as text (see the module docstring). Missing/empty/undecodable/unparseable: error naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{what} file {str(path)!r} not found; check data.data_dir and the file name in the data config"
            + (f" ({str(path)!r} is a folder)" if path.is_dir() else "")
        )
    data = path.read_bytes()
    _refuse_binary(data, path, what)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise utf8_error(path, what, data, exc) from None
    if not text.strip():
        raise ValueError(f"{what} file {str(path)!r} is empty; it needs a header row and one row per entry")
    text, hinted = _excel_sep_line(text)
    sep, names = (hinted, _header(text, hinted)) if hinted else _choose_separator(text, required)
    if hinted and log is not None:
        log.info("%s: first line 'sep=%s' (Excel's separator hint) read and skipped", path.name, hinted)
    if sep != "," and log is not None:
        log.info("%s: separator detected: %s (%r)", path.name, SEPARATOR_NAMES[sep], sep)
    _check_names(names, path, what)
    rows, n_blank, short = _rows(text, sep, len(names), path, what)
    _warn_short(short, len(names), path, log)
    if n_blank and log is not None:
        log.info("%s: %d trailing row(s) with every field empty ignored", path.name, n_blank)
    df = pd.DataFrame(rows, columns=range(len(names)), dtype=object).astype(str) if rows else \
        pd.DataFrame({i: pd.Series([], dtype=str) for i in range(len(names))})
    df.columns = names
    unnamed = [i for i, n in enumerate(names) if not n]
    for i in unnamed:
        filled = df.iloc[:, i].str.strip().ne("")
        if filled.any():
            r = int(np.flatnonzero(filled.to_numpy())[0])
            raise ValueError(
                f"{what} file {str(path)!r}: column {i + 1} has no name but holds values (row {r + 1} has "
                f"{df.iat[r, i]!r}; {int(filled.sum())} row(s) filled), e.g. a row index written by pandas' "
                "to_csv(index=True). Give it a name or delete it.")
    df = df[[c for c in df.columns if c]]
    if required:
        require_columns(df, path, required, what, sep)
    return Table(df, path, sep, [i for i, _, _ in short])


def require_columns(df: pd.DataFrame, path: Path, cols, what: str, sep: str = ",") -> None:
    missing = [c for c in cols if c not in df.columns]
    if not missing:
        return
    near = {c.casefold().replace(" ", ""): c for c in df.columns}
    hint = near.get(missing[0].casefold().replace(" ", ""))
    shown = ", ".join(map(repr, df.columns[:12])) + (" ..." if len(df.columns) > 12 else "")
    raise ValueError(
        f"{what} file {str(path)!r} has no column {missing[0]!r} (required: {', '.join(cols)}); "
        f"columns found ({SEPARATOR_NAMES[sep]}-separated; tried {', '.join(SEPARATOR_NAMES[s] for s in SEPARATORS)}): "
        f"{shown}." + (f" Did you mean {hint!r}? Names must match exactly (letter case too)." if hint else "")
        + " Fix the header or point the data config at the right file/column."
    )
