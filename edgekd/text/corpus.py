"""The offline text corpus: real English sentences that ship with every Python 3.11 install.

Labelled sentences are the docstrings of a few standard-library packages, read with `ast` from their
source files (nothing is imported), and the label is the package a sentence comes from. Unlabelled
sentences come from `pydoc_data.topics` (the language reference's help topics), then from the docstrings of
the rest of the standard library; they join the embedding-distillation transfer set and, when held out, the
retrieval evaluation. The held-out split is fixed by a hash of each sentence, so it does
not depend on the order files are read, on the sample sizes asked for, or on the seed.
"""

from __future__ import annotations

import ast
import hashlib
import re
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekd.errors import DataError

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


def package_docstrings(package: str, root: Path | None = None) -> list[str]:
    """Docstrings of a standard-library package's modules, classes and functions (tests left out)."""
    base = (root or stdlib_root()) / package
    files = sorted(base.rglob("*.py")) if base.is_dir() else [base.with_suffix(".py")]
    docs = []
    for path in files:
        if "test" in path.relative_to(base.parent).parts[:-1] or not path.is_file():
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


def is_held_out(sentence: str) -> bool:
    return int.from_bytes(hashlib.sha256(sentence.encode()).digest()[:4], "little") % HELD_OUT_BUCKETS == 0


def build_corpus(packages: tuple[str, ...] | list[str] = DEFAULT_PACKAGES, *, per_class: int = 250,
                 unlabelled: int = 2000, seed: int = 0, root: Path | None = None) -> TextCorpus:
    """Up to `per_class` sentences from each package (the labelled task) and up to `unlabelled` help-topic
    sentences; a sentence that occurs in two packages is dropped (its label would be ambiguous)."""
    if not packages:
        raise DataError("the text corpus names no packages", fix="list at least two packages in data.packages")
    rng = np.random.default_rng(seed)
    by_package = {p: sorted(set(s for d in package_docstrings(p, root) for s in split_sentences(d))) for p in packages}
    empty = [p for p, s in by_package.items() if not s]
    if empty:
        raise DataError(f"no sentences found for package(s) {', '.join(empty)}",
                        why=f"nothing with docstrings under {root or stdlib_root()}",
                        fix="name standard-library packages with docstrings, e.g. " + ", ".join(DEFAULT_PACKAGES[:4]))
    seen: dict[str, int] = {}
    for sentences in by_package.values():
        for s in sentences:
            seen[s] = seen.get(s, 0) + 1
    sentences, labels = [], []
    for label, package in enumerate(packages):
        unique = [s for s in by_package[package] if seen[s] == 1]
        pick = rng.permutation(len(unique))[:per_class]
        sentences += [unique[i] for i in sorted(pick)]
        labels += [label] * len(pick)
    if unlabelled > 0:  # help topics first, then the rest of the standard library's docstrings
        topics = sorted(set(s for t in topic_texts() for s in split_sentences(t)) - set(seen))
        pick = rng.permutation(len(topics))[:unlabelled]
        chosen = [topics[i] for i in sorted(pick)]
        if len(chosen) < unlabelled:
            taken = set(seen) | set(chosen)
            rest = sorted(set(s for d in stdlib_docstrings(packages, root) for s in split_sentences(d)) - taken)
            more = rng.permutation(len(rest))[: unlabelled - len(chosen)]
            chosen += [rest[i] for i in sorted(more)]
        sentences += chosen
        labels += [-1] * len(chosen)
    labels_array = np.asarray(labels, dtype=np.int64)
    held_out = np.array([is_held_out(s) for s in sentences], dtype=bool)
    if not (held_out & (labels_array >= 0)).any() or not (~held_out & (labels_array >= 0)).any():
        raise DataError(f"the text corpus has {len(sentences)} sentences: too few to split into training and "
                        "held-out parts", fix="raise data.per_class")
    return TextCorpus(sentences, labels_array, held_out, list(packages))
