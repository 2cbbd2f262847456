"""The text task's data as the stages use it: the corpus, its token ids, and where each row belongs."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from edgekd.progress import Reporter
from edgekd.text.corpus import TextCorpus, build_corpus


@dataclass
class TextData:
    corpus: TextCorpus
    tokenizer: Any
    train_length: int
    device_length: int
    teacher_folder: Path
    label_fraction: float = 1.0
    seed: int = 0
    student_vocabulary: str = "teacher"

    @property
    def num_classes(self) -> int:
        return len(self.corpus.label_names)

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id or 0)

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    @cached_property
    def student_token_rows(self):
        """The map from teacher ids to the student table's rows (data.text.student_vocabulary: corpus), else None."""
        if self.student_vocabulary == "teacher":
            return None
        from edgekd.text.vocabulary import TokenRows, corpus_token_ids

        unknown = self.tokenizer.unk_token_id
        fallback = self.pad_id if unknown is None else int(unknown)
        kept = corpus_token_ids(self.ids[self.train_rows], [*self.tokenizer.all_special_ids, fallback])
        return TokenRows(self.vocab_size, kept, fallback)

    def tokenize(self, rows: np.ndarray, length: int) -> np.ndarray:
        from edgekd.text.teacher import tokenize

        return tokenize(self.tokenizer, [self.corpus.sentences[i] for i in rows], length)

    @cached_property
    def teacher_sha256(self) -> str:
        """sha256 over the teacher's weights, config and tokenizer files (read once per run; the weights are
        ~90 MB), so a changed tokenizer or config makes cached teacher outputs stale, as changed weights do."""
        import hashlib

        from edgekd.rundir import sha256_file
        from edgekd.text.teacher import defining_files

        digests = [f"{path.name}:{sha256_file(path)}" for path in defining_files(self.teacher_folder)]
        return hashlib.sha256("\n".join(digests).encode()).hexdigest()

    @cached_property
    def ids(self) -> np.ndarray:
        """Every sentence's ids at the training length."""
        return self.tokenize(np.arange(len(self.corpus)), self.train_length)

    @cached_property
    def train_rows(self) -> np.ndarray:
        return self.corpus.part(held_out=False)

    @cached_property
    def held_out_rows(self) -> np.ndarray:
        return self.corpus.part(held_out=True)

    @cached_property
    def labelled_train_rows(self) -> np.ndarray:
        return self.corpus.part(held_out=False, labelled_only=True)

    @cached_property
    def student_label_rows(self) -> np.ndarray:
        """The labelled training sentences whose labels students see (data.label_fraction of them, drawn with
        data.seed; the teacher's head sees them all), as in the demo: the regime where distillation matters."""
        rows = self.labelled_train_rows
        keep = max(1, round(self.label_fraction * len(rows)))
        return np.sort(np.random.default_rng(self.seed).permutation(rows)[:keep])

    def student_targets(self, rows: np.ndarray) -> np.ndarray:
        """Labels of `rows` where students may see them, -1 elsewhere."""
        visible = np.isin(rows, self.student_label_rows)
        return np.where(visible, self.corpus.labels[rows], -1).astype(np.int64)

    @cached_property
    def labelled_held_out_rows(self) -> np.ndarray:
        return self.corpus.part(held_out=True, labelled_only=True)

    def fingerprint(self) -> str:
        """The corpus and its tokenisations, for training and for the exported graphs."""
        return f"{self.embedding_fingerprint()}-{self.device_length}"

    def embedding_fingerprint(self) -> str:
        """What the teacher's embeddings of the corpus depend on: its sentences at the training length."""
        return f"{self.corpus.fingerprint()}-{self.train_length}"


def load_text_data(recipe, reporter: Reporter | None = None) -> TextData:
    """Build the corpus of `recipe.data.text` and load the teacher folder's tokenizer (no model weights)."""
    from edgekd.errors import DataError, TextModelError, first_line
    from edgekd.text.teacher import _transformers, check_teacher_folder, default_teacher_folder

    cfg = recipe.data.text
    folder = Path(recipe.teacher.hf) if recipe.teacher.hf else default_teacher_folder()
    check_teacher_folder(folder)
    progress = (reporter.task("read package docstrings", len(cfg.transfer_packages))
                if reporter is not None and cfg.transfer_packages else None)
    corpus = build_corpus(cfg.packages, per_class=cfg.per_class, unlabelled=cfg.unlabelled, seed=recipe.data.seed,
                          labelled=cfg.labelled,
                          transfer_packages=cfg.transfer_packages, transfer_sentences=cfg.transfer_sentences,
                          cache_dir=Path(recipe.output_dir) / "cache" / "text-corpus", progress=progress)
    if progress is not None:
        progress.close()
    if len(corpus) == 0:
        raise DataError("the text corpus is empty", fix="raise data.text.per_class")
    with _transformers() as transformers:
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except Exception as exc:
            raise TextModelError(f"the tokenizer in {folder} cannot be loaded", why=first_line(exc),
                                 fix="re-save the folder with save_pretrained()") from None
    if tokenizer.pad_token_id is None:  # every sentence is padded to a fixed length, teacher and student alike
        raise TextModelError(f"the tokenizer in {folder} has no padding token",
                             why="edgekd pads every sentence to data.text.train_length and device_length tokens "
                                 "(a decoder's tokenizer, GPT-2's for one, often has none)",
                             fix="give teacher.hf a sentence encoder (BERT-like), or add a pad token to its "
                                 "tokenizer and save_pretrained() it again")
    return TextData(corpus, tokenizer, cfg.train_length, cfg.device_length, folder,
                    label_fraction=recipe.data.label_fraction, seed=recipe.data.seed,
                    student_vocabulary=cfg.student_vocabulary)
