"""Teacher and student features by module path, for feature/hint KD, attention transfer and relation KD.

Users name layers exactly as `model.named_modules()` does ("features.3", "head.1"). This module checks those
names (a typo lists the closest valid ones), taps the layers' outputs with forward hooks, probes their
shapes with one dummy batch, and builds the small trainable adapters that map a student feature onto its
teacher's shape. Adapters are trained with the student and never exported.

Only imported when distilling with features, so torch at module level is fine.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from edgekd.errors import FeatureError, first_line

__all__ = [
    "FeaturePair",
    "FeatureTap",
    "PAIR_TABLE_HEADER",
    "candidate_pairs",
    "describe_adapter",
    "format_pairs",
    "make_adapter",
    "match_features",
    "module_paths",
    "probe_shapes",
    "resolve",
]

LAYERS_FIX = ("use the names exactly as model.named_modules() spells them; "
              "run `edgekd layers TEACHER STUDENT` to list them")
_LIST_LIMIT = 40  # names shown in full before "… and N more"
PAIR_TABLE_HEADER = ["student layer", "student shape", "teacher layer", "teacher shape", "adapter"]


# --------------------------------------------------------------------------------------------- paths


def module_paths(model: nn.Module) -> list[str]:
    """The names a user may tap: every non-empty name of `model.named_modules()`, in definition order."""
    return [name for name, _ in model.named_modules() if name]


def _as_paths(paths: str | Iterable[str]) -> list[str]:
    """A single name or several, deduplicated in order (a bare string must not be iterated into letters)."""
    items = [paths] if isinstance(paths, str) else list(paths)
    for p in items:
        if not isinstance(p, str):
            raise FeatureError(f"a feature path must be a module name (a string), got {p!r}", fix=LAYERS_FIX)
    return list(dict.fromkeys(items))


def _normalised(path: str) -> str:
    """Common spellings of a module path mapped to named_modules() style: net[1] / net/1 / model.net.1 → net.1."""
    p = re.sub(r"\[(\d+)\]", r".\1", path.strip()).replace("/", ".")
    return re.sub(r"^(model|module)\.", "", p).strip(".")


def _listing(names: list[str]) -> str:
    if len(names) <= _LIST_LIMIT:
        return ", ".join(names)
    return ", ".join(names[:_LIST_LIMIT]) + f", … and {len(names) - _LIST_LIMIT} more"


def resolve(model: nn.Module, paths: str | Iterable[str], *, role: str) -> dict[str, nn.Module]:
    """Map each path to its submodule; a wrong name fails up front, before any training time is spent.

    The error names the role ("teacher"/"student") and each bad path, suggests the closest valid names
    first, then lists all of them, because a misspelt layer is the most common mistake here.
    """
    wanted = _as_paths(paths)
    modules = {name: m for name, m in model.named_modules() if name}
    bad = [p for p in wanted if p not in modules]
    if bad:
        valid = list(modules)
        hints = []
        for p in bad:
            close = [n for n in [_normalised(p)] if n in modules and n != p]
            close += [n for n in difflib.get_close_matches(p, valid, n=5, cutoff=0.5) if n not in close]
            what = "(the empty name is the whole model, not a layer)" if not p else ""
            hints.append(f"closest to '{p}': {', '.join(close) if close else 'none'}{' ' + what if what else ''}")
        names = ", ".join(f"'{p}'" for p in bad)
        raise FeatureError(
            f"the {role} model has no module named {names}",
            why="; ".join(hints) + f". {role} modules: {_listing(valid) if valid else '(none: no submodules)'}",
            fix=LAYERS_FIX,
        )
    return {p: modules[p] for p in wanted}


# ----------------------------------------------------------------------------------------------- tap


def _first_tensor(output: Any) -> torch.Tensor | None:
    """The tensor a module produced: itself, or the first tensor of a tuple/list (or dict value)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        for item in output:
            if isinstance(item, torch.Tensor):
                return item
    return None


def _version(t: torch.Tensor) -> int | None:
    try:
        return t._version
    except Exception:  # inference-mode tensors have no version counter
        return None


class FeatureTap:
    """Forward hooks that keep the latest output of each named module in `tap.features[path]`.

    Outputs are not detached, so a student loss on them trains the student (run the teacher under
    `torch.no_grad()` yourself). By default each output is cloned at capture time: the built-in
    families follow layers with `ReLU(inplace=True)`, which would otherwise overwrite a tapped
    pre-activation with its post-activation value. `clone=False` saves the copy and instead fails
    loudly on access if the captured tensor was modified in place.

    Hooks are registered on construction (or on entering after `close()`); `with` blocks may nest,
    and the hooks are removed when the outermost one exits, or by `close()`.
    """

    def __init__(self, model: nn.Module, paths: str | Iterable[str], *, role: str = "model",
                 clone: bool = True) -> None:
        self.role = role
        self.clone = clone
        self.modules = resolve(model, paths, role=role)
        self.paths = list(self.modules)
        self.features: dict[str, torch.Tensor] = {}
        self._versions: dict[str, int | None] = {}
        self._handles: list[Any] = []
        self._depth = 0
        self.open()

    @property
    def active(self) -> bool:
        return bool(self._handles)

    def open(self) -> "FeatureTap":
        """Register the hooks (no-op when already registered)."""
        if not self._handles:
            self._handles = [m.register_forward_hook(self._hook(p)) for p, m in self.modules.items()]
        return self

    def _hook(self, path: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            t = _first_tensor(output)
            if t is None:
                raise FeatureError(
                    f"{self.role} module '{path}' ({type(module).__name__}) returned "
                    f"{type(output).__name__}, not a tensor",
                    why="feature distillation compares tensors",
                    fix="tap a module that returns a tensor (or a tuple whose first tensor is the feature); "
                        "run `edgekd layers TEACHER STUDENT` to list them")
            if self.clone:
                t = t.clone()
            self.features[path] = t
            self._versions[path] = None if self.clone else _version(t)

        return hook

    def __getitem__(self, path: str) -> torch.Tensor:
        """The latest capture of `path`, checked: it must exist and must not have been changed in place since."""
        if path not in self.features:
            if path not in self.modules:
                raise FeatureError(f"'{path}' is not tapped on the {self.role} model",
                                   why=f"tapped: {', '.join(self.paths)}", fix="tap it when creating the FeatureTap")
            raise FeatureError(f"{self.role} module '{path}' has produced no output yet",
                               why="it did not run in a forward pass since the tap was opened or cleared",
                               fix="run a forward pass first, or tap a module that the forward pass uses")
        t = self.features[path]
        before = self._versions.get(path)
        if before is not None and _version(t) != before:
            raise FeatureError(f"the captured output of {self.role} module '{path}' was modified in place "
                               "later in the forward pass",
                               why="a following in-place op (such as ReLU(inplace=True)) overwrote it",
                               fix="use FeatureTap(..., clone=True) (the default), or tap the following layer instead")
        return t

    def clear(self) -> None:
        """Forget the captured outputs (the hooks stay)."""
        self.features.clear()
        self._versions.clear()

    def close(self) -> None:
        """Remove the hooks; safe to call more than once. Captured outputs stay readable until `clear()`."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._depth = 0

    def __enter__(self) -> "FeatureTap":
        self.open()
        self._depth += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self._depth = max(self._depth - 1, 0)
        if self._depth == 0:
            self.close()


# --------------------------------------------------------------------------------------------- probe


def _dummy_batch(model: nn.Module, in_shape: Sequence[int], batch: int) -> torch.Tensor:
    """A fixed-seed random batch on the model's device and float dtype (zeros could hide shape-dependent paths)."""
    ref = next(iter(model.parameters()), None)
    if ref is None:
        ref = next(iter(model.buffers()), None)
    device = ref.device if ref is not None else torch.device("cpu")
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
    gen = torch.Generator().manual_seed(0)  # a private generator: probing must not shift the training RNG
    return torch.randn(batch, *tuple(int(d) for d in in_shape), generator=gen).to(device=device, dtype=dtype)


def _run_dummy(model: nn.Module, in_shape: Sequence[int], batch: int, role: str) -> Any:
    """One eval-mode, no-grad forward; every submodule's train/eval flag is restored afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            return model(_dummy_batch(model, in_shape, batch))
    except FeatureError:
        raise
    except Exception as exc:
        shape = ", ".join(map(str, (batch, *in_shape)))
        raise FeatureError(f"could not run a dummy batch of shape ({shape}) through the {role} model",
                           why=first_line(exc),
                           fix="pass the data set's sample shape (without the batch dimension) as in_shape") from exc
    finally:
        for m, training in modes:
            m.training = training


def probe_shapes(model: nn.Module, paths: str | Iterable[str], in_shape: Sequence[int], *, batch: int = 2,
                 role: str = "model") -> dict[str, tuple[int, ...]]:
    """Each feature's shape without the batch dimension, from one dummy batch, so adapters exist before training."""
    tap = FeatureTap(model, paths, role=role, clone=False)
    try:
        _run_dummy(model, in_shape, batch, role)
        for p in tap.paths:
            if p not in tap.features:
                tap[p]  # raises: the module did not run
        # shapes survive in-place ops, so the uncloned captures are fine here
        return {p: tuple(tap.features[p].shape[1:]) for p in tap.paths}
    finally:
        tap.close()


# ------------------------------------------------------------------------------------------ adapters


def _fmt(shape: Sequence[int]) -> str:
    return "×".join(str(int(d)) for d in shape) if len(shape) else "scalar"


def _plan(student_shape: Sequence[int], teacher_shape: Sequence[int]) -> tuple[str, Callable[[], nn.Module] | None]:
    """The adapter as (description, builder) so `describe_adapter` and `make_adapter` can never disagree."""
    s, t = tuple(int(d) for d in student_shape), tuple(int(d) for d in teacher_shape)
    if s == t:
        return "none", None
    if len(s) == 1 and len(t) == 1:
        return f"linear {s[0]}→{t[0]}", lambda: nn.Linear(s[0], t[0])
    if len(s) == 2 and len(t) == 2 and s[0] == t[0]:  # (tokens, width): a transformer's states, TinyBERT-style
        return f"linear {s[1]}→{t[1]} per position", lambda: nn.Linear(s[1], t[1])
    if len(s) == 3 and len(t) == 3:
        conv = s[0] != t[0]
        pool = s[1:] != t[1:]
        parts = ([f"1×1 conv {s[0]}→{t[0]}"] if conv else []) + ([f"pool {t[1]}×{t[2]}"] if pool else [])

        def build() -> nn.Module:
            layers: list[nn.Module] = []
            if conv:
                layers.append(nn.Conv2d(s[0], t[0], 1))
            if pool:
                layers.append(nn.AdaptiveAvgPool2d((t[1], t[2])))
            return layers[0] if len(layers) == 1 else nn.Sequential(*layers)

        return " + ".join(parts), build
    if len(s) == 1 and len(t) == 3:
        n = t[0] * t[1] * t[2]
        return (f"linear {s[0]}→{_fmt(t)} + reshape",
                lambda: nn.Sequential(nn.Linear(s[0], n), nn.Unflatten(1, t)))
    if len(s) == 3 and len(t) == 1:
        return (f"global pool + linear {s[0]}→{t[0]}",
                lambda: nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(s[0], t[0])))
    raise FeatureError(
        f"cannot match a student feature of shape ({_fmt(s)}) to a teacher feature of shape ({_fmt(t)})",
        why="adapters exist for vectors (D,) and feature maps (C, H, W), in any combination of the two, and for "
            "(L, D) sequences of the same length",
        fix="pick layers whose outputs are vectors, (C, H, W) maps or (L, D) sequences; "
            "run `edgekd layers TEACHER STUDENT` to see shapes")


def describe_adapter(student_shape: Sequence[int], teacher_shape: Sequence[int]) -> str:
    """A short description of the adapter `make_adapter` would build ("none", "linear 32→128", …)."""
    return _plan(student_shape, teacher_shape)[0]


def make_adapter(student_shape: Sequence[int], teacher_shape: Sequence[int]) -> nn.Module | None:
    """A small trainable module mapping (N, *student_shape) to (N, *teacher_shape); None when they already agree.

    (D,)→(D',): Linear. (L,D)→(L,D'): Linear at each position. (C,H,W)→(C',H',W'): 1×1 conv for channels,
    adaptive average pool for the spatial size.
    (D,)→(C,H,W): Linear to C·H·W, reshaped. (C,H,W)→(D,): global average pool, then Linear C→D.
    It sits on the student side because the teacher is frozen; it is trained with the student and never exported.
    """
    build = _plan(student_shape, teacher_shape)[1]
    return build() if build is not None else None


# -------------------------------------------------------------------------------------------- pairs


@dataclass
class FeaturePair:
    """One student feature distilled towards one teacher feature, and how the student side is adapted."""

    student: str
    teacher: str
    student_shape: tuple[int, ...]
    teacher_shape: tuple[int, ...]
    adapter: str
    key: str = ""  # the pair's key in the adapter ModuleDict ("" when no adapters were built)


def match_features(teacher: nn.Module, student: nn.Module, pairs: Sequence[tuple[str, str]],
                   in_shape: Sequence[int], adapt: Sequence[bool] | None = None,
                   ) -> tuple[list[FeaturePair], nn.ModuleDict]:
    """Check (student_path, teacher_path) pairs, probe their shapes and build one adapter per pair, before training.

    Returns the pairs and a ModuleDict of adapters keyed by `pair.key` ("0", "1", …); pairs that need no adapter
    get `nn.Identity()` there so the training loop can apply `adapters[pair.key]` uniformly. `adapt[i]` False:
    pair i's loss compares structure (attention, similarity, rkd) and takes any shapes, so none is planned.
    """
    checked: list[tuple[str, str]] = []
    for item in pairs:
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(p, str) for p in item)):
            raise FeatureError(f"a feature pair must be (student_path, teacher_path), got {item!r}",
                               fix="write each pair as two module names, the student's first")
        checked.append((item[0], item[1]))
    student_paths = [s for s, _ in checked]
    teacher_paths = [t for _, t in checked]
    resolve(student, student_paths, role="student")  # name errors first, for both sides, before any forward pass
    resolve(teacher, teacher_paths, role="teacher")
    s_shapes = probe_shapes(student, student_paths, in_shape, role="student") if checked else {}
    t_shapes = probe_shapes(teacher, teacher_paths, in_shape, role="teacher") if checked else {}
    result: list[FeaturePair] = []
    adapters = nn.ModuleDict()
    for i, (s, t) in enumerate(checked):
        if adapt is not None and not adapt[i]:
            adapters[str(i)] = nn.Identity()
            result.append(FeaturePair(s, t, s_shapes[s], t_shapes[t], "none", str(i)))
            continue
        try:
            description, build = _plan(s_shapes[s], t_shapes[t])
        except FeatureError as exc:
            raise FeatureError(f"student '{s}' ({_fmt(s_shapes[s])}) cannot be matched to "
                               f"teacher '{t}' ({_fmt(t_shapes[t])})",
                               why=exc.why, fix=exc.fix) from None
        key = str(i)
        adapters[key] = build() if build is not None else nn.Identity()
        result.append(FeaturePair(s, t, s_shapes[s], t_shapes[t], description, key))
    return result, adapters


def check_logits_terms(terms: Sequence[tuple[str, str, str]], teacher: nn.Module | None, student: nn.Module,
                       in_shape: Sequence[int], logits: str = "logits") -> None:
    """(loss, student path, teacher path) terms with the logits on one side and a layer on the other: no adapter
    is made to the logits, so an element-wise loss (hint, mse, cosine) needs the layer in the logits' shape."""
    from edgekd.distill.losses import needs_same_shape

    if teacher is None:  # black-box: refused elsewhere (feature terms need the teacher's layers)
        return
    for loss, s, t in terms:
        if not needs_same_shape(loss) or (s == logits) == (t == logits):
            continue
        layer_side, logits_side = ("student", "teacher") if t == logits else ("teacher", "student")
        models = {"student": student, "teacher": teacher}
        layer = s if t == logits else t
        shape = probe_shapes(models[layer_side], [layer], in_shape, role=layer_side)[layer]
        logits_shape = tuple(_first_tensor(_run_dummy(models[logits_side], in_shape, 2, logits_side)).shape[1:])
        if shape != logits_shape:
            raise FeatureError(f"the {loss} term between {layer_side} '{layer}' ({_fmt(shape)}) and the "
                               f"{logits_side}'s logits ({_fmt(logits_shape)}) compares tensors of different shapes",
                               why="adapters are made between layers, not to the logits",
                               fix="name a layer of the other model (`edgekd layers TEACHER STUDENT` lists pairs), "
                                   "a layer of the logits' shape, or use a relation loss (similarity, rkd)")


_SKIPPED_TYPES: tuple[type, ...] = (nn.Identity, nn.Flatten, nn.Unflatten)


def _is_plumbing(module: nn.Module) -> bool:
    """Activations, dropout and reshapes: their output repeats a neighbouring layer's, so listing them is noise."""
    if isinstance(module, _SKIPPED_TYPES):
        return True
    origin = type(module).__module__
    if origin == "torch.nn.modules.dropout":
        return True
    return origin == "torch.nn.modules.activation" and not isinstance(module, nn.MultiheadAttention)


def _interesting_layers(model: nn.Module, in_shape: Sequence[int], role: str) -> list[tuple[str, tuple[int, ...]]]:
    """Tensor-producing layers in execution order, without plumbing, duplicates or the final output.

    A container whose output is the very tensor of its last child (a Sequential block) replaces that child
    in the list: "features" reads better than "features.10".
    """
    seen: list[list[Any]] = []  # [path, output tensor] in the order the modules finished
    called: set[str] = set()
    handles = []

    def hook_for(path: str, module: nn.Module) -> Callable[..., None]:
        def hook(mod: nn.Module, inputs: Any, output: Any) -> None:
            if path in called:
                return  # a module used twice keeps its first position
            called.add(path)
            t = _first_tensor(output)
            if t is None or _is_plumbing(module):
                return
            for entry in seen:
                if entry[1] is t:
                    entry[0] = path  # the enclosing container names the same tensor
                    return
            seen.append([path, t])

        return hook

    for path, module in model.named_modules():
        if path:
            handles.append(module.register_forward_hook(hook_for(path, module)))
    try:
        out = _first_tensor(_run_dummy(model, in_shape, 1, role))
    finally:
        for h in handles:
            h.remove()
    return [(p, tuple(t.shape[1:])) for p, t in seen if t is not out]


def candidate_pairs(teacher: nn.Module, student: nn.Module, in_shape: Sequence[int]) -> list[FeaturePair]:
    """Suggested (student, teacher) layer pairs for `edgekd layers`: each student layer against the teacher
    layer at the same relative depth, with the adapter it would need.

    Depth is the fraction of the way through each network's list of layers; among teacher layers at about
    the same depth, one of the same kind (vector vs feature map, same spatial size) is preferred, since it
    needs a smaller adapter.
    """
    t_layers = _interesting_layers(teacher, in_shape, "teacher")
    s_layers = _interesting_layers(student, in_shape, "student")
    if not t_layers or not s_layers:
        return []

    def cost(s_shape: tuple[int, ...], s_frac: float, i: int) -> float:
        t_shape = t_layers[i][1]
        c = abs((i + 1) / len(t_layers) - s_frac)
        if len(t_shape) != len(s_shape):
            c += 0.25
        elif t_shape[1:] != s_shape[1:]:
            c += 0.05
        try:
            _plan(s_shape, t_shape)
        except FeatureError:
            c += 10.0
        return c

    result = []
    for j, (s_path, s_shape) in enumerate(s_layers):
        frac = (j + 1) / len(s_layers)
        i = min(range(len(t_layers)), key=lambda k: (cost(s_shape, frac, k), k))
        t_path, t_shape = t_layers[i]
        try:
            description = describe_adapter(s_shape, t_shape)
        except FeatureError:
            description = "not possible (only vectors and C×H×W maps can be matched)"
        result.append(FeaturePair(s_path, t_path, s_shape, t_shape, description))
    return result


def format_pairs(pairs: Iterable[FeaturePair]) -> list[list[str]]:
    """Table rows (student layer, shape, teacher layer, shape, adapter); PAIR_TABLE_HEADER is the header."""
    return [[p.student, _fmt(p.student_shape), p.teacher, _fmt(p.teacher_shape), p.adapter] for p in pairs]
