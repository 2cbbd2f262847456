"""The stages of a text run (task: text): teacher → distill → scratch → export → bench → report.

teacher: embed the corpus with the Hugging Face encoder (cached across runs) and fit its class head;
distill: the student learns embeddings, their similarity structure and the head's classes;
scratch: the student's architecture on the labels alone, same steps; export/bench/report as for any run.
"""

from __future__ import annotations

import copy
import functools
import hashlib
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgekd.pipeline import Context
from edgekd.rundir import atomic_save_array, sha256_file

EMBED_BATCH = 32
RETRIEVAL_POOL = 2000  # held-out sentences searched for recall@10 (each one queries the others)


def text_trial(ctx: Context) -> tuple[dict[str, Any], tuple[str, ...], Callable[[str, Any, Path], None]]:
    """What Context.preflight trial-exports in a text run: the untrained student (built as the run will build
    it, for this vocabulary, its classes and device length) in every format, before the teacher embeds the
    corpus and the students train for minutes. Returns (what decides the outcome, roles, how to export one)."""
    from edgekd import __version__
    from edgekd.exporter import runtime_versions
    from edgekd.text.export import export_text_onnx, export_text_tflite

    data, cfg = ctx.text, ctx.recipe.export
    model_cfg = ctx.recipe.student.model
    checked = {"task": "text", "student": ctx.recipe.section("student")["student"]["model"], "seed": ctx.recipe.seed,
               "vocab_size": data.vocab_size, "num_classes": data.num_classes, "device_length": data.device_length,
               "token_rows": None if data.student_token_rows is None else data.student_token_rows.size,
               "formats": list(cfg.formats), "opset": cfg.opset,
               "versions": {f: runtime_versions(f) for f in cfg.formats}, "edgekd": __version__}

    def export(role: str, backend: Any, path: Path) -> None:
        model = build_student(data, model_cfg.family, model_cfg.params)
        if backend.name == "onnx":
            export_text_onnx(model, data.device_length, path, opset=cfg.opset)
        else:
            export_text_tflite(model, data.device_length, path)

    return checked, ("student",), export


def _data_inputs(ctx: Context) -> dict[str, Any]:
    return {"task": "text", "data": ctx.recipe.data.hashed(), "data_fingerprint": ctx.text.fingerprint()}


def _teacher_key(ctx: Context) -> str:
    """Cache key of the teacher's embeddings: its files' sha256, the corpus and the training length."""
    # not the device length: a change of it alone re-embedded the whole corpus (16 minutes for minilm)
    return hashlib.sha256(f"{ctx.text.teacher_sha256}-{ctx.text.embedding_fingerprint()}".encode()).hexdigest()[:24]


# -- teacher -------------------------------------------------------------------------------

def teacher_inputs(ctx: Context) -> dict[str, Any]:
    return {**_data_inputs(ctx), "teacher": ctx.recipe.section("teacher")["teacher"], "seed": ctx.recipe.seed,
            "teacher_key": _teacher_key(ctx)}


def teacher_embeddings(ctx: Context) -> np.ndarray:
    """The teacher's sentence embedding of every corpus row."""
    ids = ctx.text.ids
    return _cached_teacher_array(ctx, f"{_teacher_key(ctx)}.npy", "teacher embeddings", "embed corpus with the teacher",
                                 len(ids), lambda teacher, task: teacher.embed(ids, EMBED_BATCH, progress=task))


def teacher_token_outputs(ctx: Context) -> np.ndarray:
    """The teacher's embedding of every vocabulary token alone (distill.text.token_init: token_outputs)."""
    key = hashlib.sha256(f"{ctx.text.teacher_sha256}-tokens".encode()).hexdigest()[:24]
    return _cached_teacher_array(ctx, f"tokens-{key}.npy", "teacher token outputs",
                                 "embed each vocabulary token with the teacher", ctx.text.vocab_size,
                                 lambda teacher, task: teacher.token_outputs(progress=task))


def _cached_teacher_array(ctx: Context, filename: str, what: str, description: str, total: int,
                          compute: Callable[[Any, Any], np.ndarray]) -> np.ndarray:
    """An array the teacher computes once, kept under export/cache/text-teacher (.npy, never pickled)."""
    from edgekd.text.teacher import load_teacher

    cache = ctx.recipe.output_dir / "cache" / "text-teacher" / filename
    if cache.is_file():
        cached = _load_cached(cache, total)
        if cached is not None:
            ctx.reporter.note(f"{what}: reused {cache}")
            return cached
        ctx.reporter.note(f"{what}: {cache} is damaged (not an array of {total:,} rows); computing it again")
    teacher = load_teacher(ctx.text.teacher_folder)
    task = ctx.reporter.task(description, total)
    array = compute(teacher, task)
    task.close()
    cache.parent.mkdir(parents=True, exist_ok=True)
    atomic_save_array(cache, array)
    return array


def _load_cached(path: Path, rows: int) -> np.ndarray | None:
    """A cached teacher array, or None when the file is not a finite float array of `rows` rows (a bad copy, a
    full disk: edgekd's own writes are atomic); recomputing costs minutes, a wrong array the whole run."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if array.ndim != 2 or len(array) != rows or array.dtype.kind != "f" or not np.isfinite(array).all():
        return None
    return array


def teacher_run(ctx: Context) -> tuple[list[Path], dict[str, Any]]:
    """Embed the corpus with the teacher and fit a linear class head on the labelled training sentences."""
    import time

    import torch

    from edgekd.checkpoints import save_checkpoint
    from edgekd.text.metrics import accuracy
    from edgekd.text.train import train_head

    ctx.preflight()  # the student trial-exported before the corpus is embedded (minutes on a CPU)
    started = time.perf_counter()
    data = ctx.text
    embeddings = teacher_embeddings(ctx)
    labels = data.corpus.labels
    head = train_head(embeddings[data.labelled_train_rows], labels[data.labelled_train_rows], seed=ctx.recipe.seed)
    with torch.no_grad():
        logits = head(torch.from_numpy(embeddings)).numpy()
    emb_path = atomic_save_array(ctx.rundir.data / "teacher_embeddings.npy", embeddings)
    logit_path = atomic_save_array(ctx.rundir.data / "teacher_logits.npy", logits)
    held = data.labelled_held_out_rows
    metrics = {"test_accuracy": accuracy(logits[held], labels[held]),
               "train_accuracy": float((logits[data.labelled_train_rows].argmax(1) ==
                                        labels[data.labelled_train_rows]).mean()),
               "parameters": (_teacher_parameters(data.teacher_folder) or 0) + sum(p.numel() for p in head.parameters()),
               "source": str(data.teacher_folder), "seconds": round(time.perf_counter() - started, 2),
               "sentences": len(data.corpus), "labelled_samples": int(len(data.labelled_train_rows)),
               "generation": 0}
    # The encoder is named by its folder's name and weights, not its path: the same weights found elsewhere (a
    # moved venv or model folder) write the same bytes, and the stages after this one are not redone for it.
    # The path stays in the manifest's metrics (`source`).
    path = save_checkpoint(head, ctx.rundir.checkpoints / "teacher.pt", role="teacher", run=ctx.recipe.name,
                           hf_folder=data.teacher_folder.name, teacher_sha256=data.teacher_sha256,
                           metrics={k: v for k, v in metrics.items() if k != "source"}, generation=0)
    return [path, emb_path, logit_path], {"metrics": metrics}


def _teacher_parameters(folder: Path) -> int | None:
    """Parameter count read from the safetensors header (None for a .bin folder)."""
    from safetensors import safe_open

    path = folder / "model.safetensors"
    if not path.is_file():
        return None
    with safe_open(str(path), "np") as fh:
        return int(sum(np.prod(fh.get_slice(k).get_shape()) for k in fh.keys()))


def trained_teacher(ctx: Context):
    """The exportable teacher: the Hugging Face encoder with mean pooling and the fitted head."""
    from torch import nn

    from edgekd.checkpoints import load_weights
    from edgekd.text.student import TeacherWithHead
    from edgekd.text.teacher import load_teacher

    teacher = load_teacher(ctx.text.teacher_folder)
    head = nn.Linear(teacher.dim, ctx.text.num_classes)
    load_weights(head, ctx.rundir.checkpoints / "teacher.pt", role="teacher")
    return TeacherWithHead(teacher.model, head.eval(), teacher.pad_id).eval()


# -- students ------------------------------------------------------------------------------

def new_student(ctx: Context, seed: int | None = None, *, from_teacher: bool = True):
    """A fresh student; `from_teacher=False` (the scratch baseline) never starts from the teacher's weights."""
    from edgekd.distill.trainer import seed_everything

    seed_everything(ctx.recipe.seed if seed is None else seed)
    cfg = ctx.recipe.student.model
    model = build_student(ctx.text, cfg.family, cfg.params)
    if from_teacher and ctx.recipe.distill.text.init_from_teacher:
        _init_token_table(ctx, model)
        _init_head(model, ctx.rundir.checkpoints / "teacher.pt")
    return model


def build_student(data, family: str, params: dict[str, Any]):
    """A text student of `family` with `params`, sized to the run's vocabulary, classes and device length."""
    from edgekd.errors import RecipeError
    from edgekd.text.student import TEXT_STUDENTS

    vocabulary = {} if data.student_token_rows is None else {"token_rows": copy.deepcopy(data.student_token_rows)}
    try:
        return TEXT_STUDENTS[family](data.vocab_size, data.num_classes, pad_id=data.pad_id,
                                     max_length=data.device_length, **vocabulary, **params)
    except (ValueError, RuntimeError) as exc:  # sizes torch cannot build (negative, heads not dividing hidden)
        raise RecipeError(f"student.model.params: {family} cannot be built with {params}", why=str(exc),
                          fix="use positive sizes, with hidden a multiple of heads") from None


def _init_head(model, teacher_checkpoint: Path) -> None:
    """Start the student's class head from the teacher's: the student embeds into the teacher's space, so
    the teacher's head already reads it (up to how close the embeddings get)."""
    import torch

    from edgekd.checkpoints import read_checkpoint

    if not teacher_checkpoint.is_file():
        return
    state = read_checkpoint(teacher_checkpoint)["state_dict"]
    head = model.head
    if tuple(state["weight"].shape) == tuple(head.weight.shape):
        with torch.no_grad():
            head.weight.copy_(state["weight"])
            head.bias.copy_(state["bias"])


def _init_token_table(ctx: Context, model) -> None:
    """Start the student's token table from the teacher (distill.text.token_init), PCA-reduced to its width
    and scaled like torch's own init. From token outputs, a student with a `skip` path also gets the way back
    (inverse PCA) there and a silent MLP, so at step 0 it is the teacher's averaged token outputs."""
    import torch

    from edgekd.text.teacher import token_embedding_init
    from edgekd.text.vocabulary import per_row

    table = model.token.weight
    if ctx.recipe.distill.text.token_init == "word_embeddings":
        init = token_embedding_init(ctx.text.teacher_folder, table.shape[1])
        if init is None:
            return
        init = per_row(init, getattr(model, "token_rows", None))
        if init.shape[0] == table.shape[0]:
            with torch.no_grad():
                table.copy_(torch.from_numpy(init) * float(table.std()))
        return
    start_from_token_outputs(model, teacher_token_outputs(ctx))


def start_from_token_outputs(model, outputs: np.ndarray) -> None:
    """Token table = the teacher's per-token outputs, PCA-reduced; with a `skip` path, skip = the inverse PCA
    and the MLP starts silent. Left as it is when the vocabulary or widths do not fit."""
    import torch

    from edgekd.text.teacher import pca_reduce
    from edgekd.text.vocabulary import per_row

    table = model.token.weight
    outputs = per_row(outputs, getattr(model, "token_rows", None))
    if outputs.shape[0] != table.shape[0] or outputs.shape[1] < table.shape[1]:
        return
    reduced = pca_reduce(outputs, table.shape[1])
    skip = getattr(model, "skip", None)
    with torch.no_grad():
        table.copy_(torch.from_numpy(reduced.table))
        if isinstance(skip, torch.nn.Linear) and tuple(skip.weight.shape) == reduced.back.shape:
            skip.weight.copy_(torch.from_numpy(reduced.back))
            skip.bias.copy_(torch.from_numpy(reduced.mean))
            model.mlp[-1].weight.zero_()
            model.mlp[-1].bias.zero_()


def trained_student(ctx: Context, role: str):
    from edgekd.checkpoints import load_weights

    model = new_student(ctx, from_teacher=False)  # the checkpoint overwrites every weight
    load_weights(model, ctx.rundir.checkpoints / f"{role}.pt", role=role)
    return model.eval()


def _budget(ctx: Context) -> int:
    """Optimizer steps of each student: epochs over the transfer set (every training sentence)."""
    from edgekd.distill.trainer import steps_for

    t = ctx.recipe.distill.train
    return steps_for(len(ctx.text.train_rows), t.batch_size, t.epochs)


def retrieval_pool(ctx: Context) -> tuple[np.ndarray, np.ndarray]:
    """The held-out sentences searched for recall@10 and the teacher's embeddings of them. Only those rows
    are read: the whole embedding file is every sentence's (~260 MB on the minilm corpus)."""
    rows = ctx.text.held_out_rows[:RETRIEVAL_POOL]
    embeddings = np.load(ctx.rundir.data / "teacher_embeddings.npy", mmap_mode="r", allow_pickle=False)
    return rows, np.asarray(embeddings[rows])


def student_metrics(ctx: Context, model) -> dict[str, Any]:
    from edgekd.text.metrics import accuracy, text_metrics
    from edgekd.text.train import predict

    data = ctx.text
    held, teacher = retrieval_pool(ctx)
    logits, embeddings = predict(model, data.ids[held])
    metrics = text_metrics(logits, embeddings, data.corpus.labels[held], teacher)
    labelled = data.labelled_held_out_rows
    labelled_logits, labels = predict(model, data.ids[labelled])[0], data.corpus.labels[labelled]
    metrics["accuracy"] = accuracy(labelled_logits, labels)
    # per sentence, as the image stages keep it: the report tests KD against scratch on the same sentences
    metrics["test_correct"] = "".join("1" if ok else "0" for ok in labelled_logits.argmax(axis=1) == labels)
    return {"test_accuracy": metrics.pop("accuracy"), **metrics,
            "parameters": sum(p.numel() for p in model.parameters())}


def _save_student(ctx: Context, model, role: str, metrics: dict[str, Any], **meta: Any) -> Path:
    from edgekd.checkpoints import save_checkpoint

    return save_checkpoint(model, ctx.rundir.checkpoints / f"{role}.pt", role=role, run=ctx.recipe.name,
                           family=ctx.recipe.student.model.family, metrics=metrics, **meta)


def distill_inputs(ctx: Context) -> dict[str, Any]:
    from edgekd.stages import hashed_distill_section

    return {**_data_inputs(ctx), "teacher": ctx.hashes["teacher"], "seed": ctx.recipe.seed,
            **ctx.recipe.section("student"), "distill": hashed_distill_section(ctx.recipe)}


def distilled_student(ctx: Context, seed: int | None = None):
    """(student, TrainResult): the student taught by the teacher's embeddings, similarity structure and
    classes over every training sentence (labelled or not)."""
    from edgekd.text.train import TextKDObjective, TextLossWeights, train_student

    d, data = ctx.recipe.distill, ctx.text
    rows = data.train_rows
    embeddings = np.load(ctx.rundir.data / "teacher_embeddings.npy", allow_pickle=False)
    logits = np.load(ctx.rundir.data / "teacher_logits.npy", allow_pickle=False)
    weights = TextLossWeights(cosine=d.text.cosine, relation=d.text.relation, response=d.text.response,
                              temperature=d.loss.temperature, alpha=d.loss.alpha,
                              response_into_encoder=d.text.response_into_encoder)
    seed = ctx.recipe.seed if seed is None else seed
    model = new_student(ctx, seed)
    result = train_student(model, data.ids[rows], data.student_targets(rows),
                           objective=TextKDObjective(embeddings[rows], logits[rows], weights), steps=_budget(ctx),
                           batch_size=d.train.batch_size, lr=d.train.lr, weight_decay=d.train.weight_decay,
                           seed=seed, reporter=ctx.reporter, description="distill text student")
    return model, result


def scratch_student(ctx: Context, seed: int | None = None):
    """(model, TrainResult): the student's architecture on the labels students may see alone, with the
    distilled student's number of steps."""
    from edgekd.text.train import LabelsOnlyObjective, train_student

    d, data = ctx.recipe.distill, ctx.text
    rows = data.student_label_rows
    seed = ctx.recipe.seed if seed is None else seed
    model = new_student(ctx, seed, from_teacher=False)
    result = train_student(model, data.ids[rows], data.corpus.labels[rows], objective=LabelsOnlyObjective(),
                           steps=_budget(ctx), batch_size=d.train.batch_size, lr=d.train.lr,
                           weight_decay=d.train.weight_decay, seed=seed, reporter=ctx.reporter,
                           description="train scratch baseline")
    return model, result


def distill_run(ctx: Context) -> tuple[list[Path], dict[str, Any]]:
    ctx.preflight()
    data = ctx.text
    model, result = distilled_student(ctx)
    rows = data.train_rows
    metrics = {**student_metrics(ctx, model), "train_seconds": round(result.seconds, 2), "steps": result.steps,
               "transfer_samples": int(len(rows)), "labelled_samples": int((data.student_targets(rows) >= 0).sum()),
               "strategy": "text_kd", "generation": 1}
    path = _save_student(ctx, model, "student", metrics, generation=1,
                         teacher_checkpoint_sha256=sha256_file(ctx.rundir.checkpoints / "teacher.pt"))
    return [path], {"metrics": metrics}


def scratch_inputs(ctx: Context) -> dict[str, Any]:
    """What scratch_student reads: the student and the training settings (a distillation loss or the text KD
    terms changed beside them retrained it for nothing, as in the image stages)."""
    return {**_data_inputs(ctx), "seed": ctx.recipe.seed, **ctx.recipe.section("student"),
            "distill": {"train": ctx.recipe.section("distill")["distill"]["train"]}}


def scratch_run(ctx: Context) -> tuple[list[Path], dict[str, Any]]:
    ctx.preflight()
    model, result = scratch_student(ctx)
    metrics = {**student_metrics(ctx, model), "train_seconds": round(result.seconds, 2), "steps": result.steps,
               "labelled_samples": int(len(ctx.text.student_label_rows))}
    return [_save_student(ctx, model, "scratch", metrics, generation=0)], {"metrics": metrics}


# -- export, bench, report -----------------------------------------------------------------

def export_inputs(ctx: Context) -> dict[str, Any]:
    from edgekd.stages import exported_roles, hashed_export_section, int8_reduce_range

    stage_of = {"student": "distill"}
    export = hashed_export_section(ctx.recipe)
    models = {r: ctx.hashes.get(stage_of.get(r, r)) for r in exported_roles(ctx.recipe)}
    return {**_data_inputs(ctx), "models": models, "export": export,
            "int8_reduce_range": int8_reduce_range(ctx, export["int8_reduce_range"])}


def parity_ids(ctx: Context) -> tuple[np.ndarray, np.ndarray]:
    """The labelled held-out sentences at the device length: the artifact's accuracy here is the one the
    device reports (bench scores the same rows)."""
    data = ctx.text
    rows = data.labelled_held_out_rows
    return data.tokenize(rows, data.device_length), data.corpus.labels[rows]


def write_test_split(ctx: Context, split: tuple[np.ndarray, np.ndarray] | None = None) -> tuple[Path, Path]:
    """The labelled held-out sentences as token ids and their labels (.npy; `split`: parity_ids already made):
    what a device scores an artifact with, written by the export too, so `edgekd bench` scores the files of a
    run whose recipe has no bench."""
    ids, labels = split if split is not None else parity_ids(ctx)
    return (atomic_save_array(ctx.rundir.data / "test_ids.npy", ids),
            atomic_save_array(ctx.rundir.data / "test_y.npy", labels.astype(np.int64)))


def bench_sentence(ctx: Context) -> tuple[str, np.ndarray]:
    """The held-out sentence a text run's bench times and its ids at the device length ([1, length]): the bench
    stage feeds them, and every exported record keeps them for `edgekd bench ARTIFACT` to time the same."""
    data = ctx.text
    first = data.held_out_rows[:1]
    return data.corpus.sentences[first[0]], data.tokenize(first, data.device_length)


def export_run(ctx: Context) -> tuple[list[Path], dict[str, Any]]:
    from edgekd.exporter import floor_artifact
    from edgekd.stages import export_options, export_outcome, exported_roles
    from edgekd.text.export import (TOKENIZER_JSON, export_text_model, ship_tokenizer, text_input_record,
                                    tokenizer_json, write_text_floor)

    cfg, data = ctx.recipe.export, ctx.text
    ids, labels = parity_ids(ctx)
    rng = np.random.default_rng(ctx.recipe.seed)
    options = export_options(ctx, calibration=data.tokenize(
        rng.permutation(data.train_rows)[: cfg.calibration_samples], data.device_length))
    sentence, sentence_ids = bench_sentence(ctx)
    text_input = text_input_record(data.device_length, data.pad_id, sentence, sentence_ids[0])
    artifacts = []
    for role in exported_roles(ctx.recipe):
        model = trained_teacher(ctx) if role == "teacher" else trained_student(ctx, role)
        checkpoint = ctx.rundir.checkpoints / f"{role}.pt"
        artifacts += export_text_model(
            model, role=role, formats=list(cfg.formats), precisions=list(cfg.targets[role]),
            out_root=ctx.rundir.artifacts, length=data.device_length, ids=ids, labels=labels,
            num_classes=data.num_classes, options=options, min_agreement=cfg.parity.min_agreement,
            min_agreement_int4=cfg.parity.min_agreement_int4,
            lineage={"run": ctx.recipe.name, "checkpoint": str(checkpoint.relative_to(ctx.rundir.root)),
                     "checkpoint_sha256": sha256_file(checkpoint), "generation": 1 if role == "student" else 0,
                     **({"hf_folder": str(data.teacher_folder)} if role == "teacher" else {})},
            text_input=text_input, reporter=ctx.reporter)
    floors = [floor_artifact(ctx.rundir.artifacts, fmt, (data.device_length,), options, run=ctx.recipe.name,
                             write=functools.partial(write_text_floor, length=data.device_length, opset=options.opset))
              for fmt in cfg.formats]
    outputs, summary = export_outcome(ctx, artifacts + floors)
    write_test_split(ctx, (ids, labels))
    made_json = None if (data.teacher_folder / TOKENIZER_JSON).is_file() else tokenizer_json(data.tokenizer)
    outputs += [path for a in artifacts for path in ship_tokenizer(data.teacher_folder, a.path.parent, made_json)]
    return outputs, {**summary, "retrieval": exported_retrieval(ctx, [a for a in artifacts if a.role != "teacher"])}


def exported_retrieval(ctx: Context, artifacts: list) -> dict[str, Any]:
    """Cosine, recall@10 and best@10 to the teacher of each exported file's embeddings, run on the retrieval
    pool at the device length: the embedding's accuracy as the phone would deliver it (parity only compares a
    file with its own PyTorch model). The teacher's files are left out: each would take a minute or more here."""
    from edgekd.text.export import run_text_artifact
    from edgekd.text.metrics import embedding_metrics

    pool, reference = retrieval_pool(ctx)
    ids = ctx.text.tokenize(pool, ctx.text.device_length)
    task = ctx.reporter.task("score exported files on the retrieval pool", len(artifacts))
    scores = {}
    for artifact in artifacts:
        scores[artifact.name] = embedding_metrics(run_text_artifact(artifact.path, ids)[1], reference)
        task.advance(1)
    task.close()
    return {"pool": len(pool), "length": ctx.text.device_length, "files": scores}


def bench_run(ctx: Context) -> tuple[list[Path], dict[str, Any]]:
    """Time every artifact on the recipe's device with one tokenised sentence (tokenisation is done here, on
    the host, and is not in the timed region), and score the held-out sentences on the device. The floor graph
    (token ids in, the same ids out) is timed with the same ids, as in image runs unless bench.floor is off."""
    from edgekd.stages import bench_artifacts, benched_artifacts

    b = ctx.recipe.bench
    inputs = atomic_save_array(ctx.rundir.data / f"bench_ids_b{b.batch_size}.npy",
                               np.ascontiguousarray(np.repeat(bench_sentence(ctx)[1], b.batch_size, axis=0)))
    return bench_artifacts(ctx, benched_artifacts(ctx), inputs, write_test_split(ctx))


def report_run(ctx: Context) -> tuple[list[Path], dict[str, Any]]:
    from edgekd.bench.report import build_summary, write_pages
    from edgekd.rundir import atomic_write_json
    from edgekd.stages import run_artifacts

    manifest = ctx.rundir.load_manifest()["stages"]
    metrics = {role: manifest.get(stage, {}).get("metrics") for role, stage in
               (("teacher", "teacher"), ("student", "distill"), ("scratch", "scratch"))}
    summary = build_summary(ctx.rundir, recipe=ctx.recipe.model_dump(mode="json"), model_metrics=metrics,
                            class_names=ctx.text.corpus.label_names)
    summary["text"] = {"tokenization": "on the host, outside the timed region: the device times the model on "
                                       f"token ids padded to {ctx.text.device_length}",
                       "retrieval_pool": min(RETRIEVAL_POOL, len(ctx.text.held_out_rows)),
                       "embedding_parity": {a.name: a.output_checks.get("embedding") for a in run_artifacts(ctx)
                                            if a.role != "floor"},
                       "exported_retrieval": manifest.get("export", {}).get("retrieval")}
    summary["findings"] = _text_findings(summary) + summary.get("findings", [])
    path = atomic_write_json(ctx.rundir.results / "summary.json", summary)
    return [path, *write_pages(summary, ctx.rundir)], {}


def _text_findings(summary: dict[str, Any]) -> list[str]:
    """How close the students came to the teacher, in the words a user would look for."""
    models, text = summary["models"], summary["text"]
    teacher = (models.get("teacher") or {}).get("test_accuracy")
    out = []
    for role in ("student", "scratch"):
        m = models.get(role)
        if not m or teacher is None:
            continue
        indexed = m.get("recall_at_10_teacher_index")
        against_index = ("" if indexed is None else
                         f"; {indexed:.3f} when its queries search an index the teacher built")
        best = m.get("best_match_at_10")
        best_match = "" if best is None else f"; the teacher's best match among its top 10 for {best:.1%} of queries"
        floor = (" (labels alone: its embedding was never taught the teacher's, so its cosine and recall are a "
                 "floor, not a rival)" if role == "scratch" else "")
        pool = text["retrieval_pool"]
        recall = (f"recall@10 of the teacher's neighbours {m['recall_at_10']:.3f} (searching {pool} held-out "
                  f"sentences{against_index}{best_match})" if m["recall_at_10"] == m["recall_at_10"] else
                  f"no recall@10 ({pool} held-out sentences: a search of 10 neighbours needs more than 10)")
        out.append(f"Text {role}{floor}: embedding cosine to the teacher {m['cosine_to_teacher']:.3f}, {recall}, "
                   f"accuracy {m['test_accuracy']:.2%} vs the teacher's {teacher:.2%}.")
    out += _exported_findings(summary)
    out.append(f"Tokenization ran {text['tokenization']}.")
    return out


def _span(values: list[float], spec: str) -> str:
    low, high = format(min(values), spec), format(max(values), spec)
    return low if low == high else f"{low}–{high}"


def _exported_findings(summary: dict[str, Any]) -> list[str]:
    """What exporting (and quantizing) cost the student's embedding, in one line; each file is in the
    report's embedding table."""
    exported = summary["text"].get("exported_retrieval") or {}
    roles = {row["name"]: row["role"] for row in summary.get("rows", [])}
    files = {name: m for name, m in (exported.get("files") or {}).items() if roles.get(name) == "student"}
    if not files:
        return []
    scores = list(files.values())
    lowest = min(files, key=lambda name: files[name]["cosine_to_teacher"])
    pytorch = summary["models"].get("student") or {}
    before = ("" if pytorch.get("best_match_at_10") is None else
              f" (the PyTorch student: {pytorch['cosine_to_teacher']:.3f}, {pytorch['recall_at_10']:.3f}, "
              f"{pytorch['best_match_at_10']:.1%})")
    return [f"The student's {len(files)} exported files against the teacher ({exported['pool']} held-out sentences "
            f"at {exported['length']} tokens): cosine {_span([m['cosine_to_teacher'] for m in scores], '.3f')}, "
            f"recall@10 {_span([m['recall_at_10'] for m in scores], '.3f')}, best@10 "
            f"{_span([m['best_match_at_10'] for m in scores], '.1%')}{before}; lowest cosine: {lowest}. Each file "
            "is in the embedding table."]
