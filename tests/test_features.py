"""Teacher/student features by module path: taps, shape probes, adapters and suggested pairs, on the real families."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgekd.distill.features import (
    PAIR_TABLE_HEADER,
    FeaturePair,
    FeatureTap,
    candidate_pairs,
    describe_adapter,
    format_pairs,
    make_adapter,
    match_features,
    module_paths,
    probe_shapes,
    resolve,
)
from edgekd.errors import FeatureError
from edgekd.models import create_model

IN_SHAPE = (64,)


def model(family: str, **params) -> nn.Module:
    torch.manual_seed(0)
    return create_model(family, in_shape=IN_SHAPE, num_classes=10, **params)


def batch(n: int = 4) -> torch.Tensor:
    return torch.randn(n, *IN_SHAPE, generator=torch.Generator().manual_seed(1))


def test_module_paths_are_the_non_empty_named_modules():
    mlp = model("mlp")
    assert module_paths(mlp) == ["net", "net.0", "net.1", "net.2", "net.3"]
    assert "" not in module_paths(model("cnn"))


def test_a_tapped_path_captures_that_submodules_output():
    cnn = model("cnn").eval()
    x = batch()
    with torch.no_grad(), FeatureTap(cnn, ["features", "head.1", "features.3"], role="teacher") as tap:
        logits = cnn(x)
        image = cnn.to_image(x)
        feats = cnn.features(image)
        assert torch.allclose(tap["features"], feats)
        # head.1 is followed by ReLU(inplace=True): the capture must still be the pre-activation Linear output
        assert torch.allclose(tap["head.1"], cnn.head[1](cnn.head[0](feats)))
        assert (tap["head.1"] < 0).any()
        assert torch.allclose(tap["features.3"], cnn.features[3](cnn.features[:3](image)))
        assert logits.shape == (4, 10)


def test_tuple_outputs_give_their_first_tensor():
    class Pair(nn.Module):
        def forward(self, x):
            return x * 2, "meta"

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.pair = Pair()

        def forward(self, x):
            return self.pair(x)[0]

    net, x = Net(), batch()
    with FeatureTap(net, "pair") as tap:
        net(x)
    assert torch.equal(tap["pair"], x * 2)


def test_gradients_flow_through_tapped_student_features():
    student = model("tiny_cnn").train()
    with FeatureTap(student, ["features", "features.0"], role="student") as tap:
        student(batch())
        loss = tap["features"].pow(2).mean() + tap["features.0"].abs().mean()
    assert tap["features"].requires_grad
    loss.backward()
    assert student.features[0].weight.grad is not None and student.features[0].weight.grad.abs().sum() > 0
    assert student.features[3].weight.grad.abs().sum() > 0
    assert student.head[1].weight.grad is None  # not on the path of the feature loss


def test_hooks_are_removed_when_the_context_exits():
    mlp = model("mlp")
    with FeatureTap(mlp, ["net.1"]) as tap:
        with tap:  # nested use keeps the hooks until the outermost exit
            pass
        assert tap.active
        mlp(batch())
        assert "net.1" in tap.features
    assert not tap.active and not any(m._forward_hooks for m in mlp.modules())
    tap.clear()
    mlp(batch())
    assert tap.features == {}
    tap.close()  # idempotent
    with tap:  # re-opening registers the hooks again
        mlp(batch())
    assert "net.1" in tap.features and not tap.active


def test_uncloned_capture_overwritten_in_place_fails_loudly():
    cnn = model("cnn").eval()
    with torch.no_grad(), FeatureTap(cnn, ["head.1"], clone=False) as tap:
        cnn(batch())
    with pytest.raises(FeatureError, match="modified in place"):
        tap["head.1"]


def test_a_wrong_path_names_the_role_and_the_closest_matches():
    cnn = model("cnn")
    with pytest.raises(FeatureError) as info:
        resolve(cnn, ["head.5"], role="teacher")
    message = str(info.value)
    assert "teacher" in info.value.what and "'head.5'" in info.value.what
    assert "closest to 'head.5': head." in info.value.why
    assert "features.10" in info.value.why  # the full list follows
    assert "edgekd layers TEACHER STUDENT" in info.value.fix
    assert message.index("closest") < message.index("features.10")

    with pytest.raises(FeatureError) as info:
        FeatureTap(model("mlp"), ["net[1]"], role="student")
    assert "student" in info.value.what
    assert info.value.why.startswith("closest to 'net[1]': net.1")


def test_probe_shapes_on_the_mlp_and_cnn_families():
    mlp = model("mlp", width=32).train()
    assert probe_shapes(mlp, ["net.1", "net.2", "net.3"], IN_SHAPE) == {"net.1": (32,), "net.2": (32,), "net.3": (10,)}
    assert mlp.training and all(m.training for m in mlp.modules())

    cnn = model("cnn")
    cnn.train()
    cnn.features[1].eval()  # a per-module mode (e.g. a frozen BN) must survive the probe
    running = cnn.features[1].running_mean.clone()
    shapes = probe_shapes(cnn, ["features.0", "features.6", "features", "head.1"], IN_SHAPE, batch=3)
    assert shapes == {"features.0": (32, 8, 8), "features.6": (64, 4, 4), "features": (128, 2, 2), "head.1": (128,)}
    assert cnn.training and not cnn.features[1].training and cnn.features[4].training
    assert torch.equal(cnn.features[1].running_mean, running)
    assert not any(m._forward_hooks for m in cnn.modules())


def test_probe_with_a_wrong_input_shape_explains_itself():
    with pytest.raises(FeatureError, match="dummy batch"):
        probe_shapes(model("mlp"), ["net.1"], (10,), role="student")


@pytest.mark.parametrize("student_shape, teacher_shape, description", [
    ((32,), (128,), "linear 32→128"),
    ((8, 4, 4), (32, 4, 4), "1×1 conv 8→32"),
    ((8, 8, 8), (32, 4, 4), "1×1 conv 8→32 + pool 4×4"),
    ((32, 8, 8), (32, 2, 2), "pool 2×2"),
    ((32,), (16, 2, 2), "linear 32→16×2×2 + reshape"),
    ((16, 4, 4), (128,), "global pool + linear 16→128"),
    ((12, 8), (12, 24), "linear 8→24 per position"),  # a transformer's token states, as TinyBERT distils them
])
def test_make_adapter_maps_student_shape_to_teacher_shape(student_shape, teacher_shape, description):
    adapter = make_adapter(student_shape, teacher_shape)
    assert adapter is not None and describe_adapter(student_shape, teacher_shape) == description
    out = adapter(torch.randn(3, *student_shape))
    assert tuple(out.shape) == (3, *teacher_shape)


def test_make_adapter_for_equal_shapes_is_none_and_impossible_pairs_fail():
    assert make_adapter((16, 2, 2), [16, 2, 2]) is None
    assert describe_adapter((32,), (32,)) == "none"
    with pytest.raises(FeatureError) as info:
        make_adapter((10, 32), (128,))
    assert "10×32" in info.value.what and "128" in info.value.what


def test_match_features_cnn_teacher_with_mlp_and_tiny_cnn_students():
    teacher = model("cnn").eval()
    for p in teacher.parameters():
        p.requires_grad_(False)

    mlp = model("mlp")
    pairs, adapters = match_features(teacher, mlp, [("net.2", "head.2"), ("net.1", "features")], IN_SHAPE)
    assert pairs[0] == FeaturePair("net.2", "head.2", (32,), (128,), "linear 32→128", "0")
    assert pairs[1].adapter == "linear 32→128×2×2 + reshape" and pairs[1].key == "1"
    assert set(adapters) == {"0", "1"}

    tiny = model("tiny_cnn").train()
    pairs, adapters = match_features(teacher, tiny, [("features", "features"), ("head.0", "head.1"),
                                                     ("features.2", "features.6"), ("features.5", "features")],
                                     IN_SHAPE)
    assert [p.adapter for p in pairs] == ["1×1 conv 16→128", "linear 64→128", "1×1 conv 8→64",
                                          "1×1 conv 16→128"]
    assert tiny.training  # the probe restored the mode

    # one distillation loss: teacher under no_grad; gradients reach the student and the adapters
    x = batch(8)
    with FeatureTap(teacher, [p.teacher for p in pairs], role="teacher") as t_tap, \
            FeatureTap(tiny, [p.student for p in pairs], role="student") as s_tap:
        with torch.no_grad():
            teacher(x)
        tiny(x)
        loss = sum(nn.functional.mse_loss(adapters[p.key](s_tap[p.student]), t_tap[p.teacher]) for p in pairs)
    loss.backward()
    assert all(p.grad is not None for p in adapters.parameters())
    assert tiny.features[0].weight.grad.abs().sum() > 0


class _Sequence(nn.Module):
    """A 1-D conv stack: features (channels, length), neither a vector nor a (C, H, W) map."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, channels, 3, padding=1)
        self.head = nn.Linear(channels * 64, 10)

    def forward(self, x):
        return self.head(self.conv(x.unsqueeze(1)).flatten(1))


def test_a_relation_loss_takes_features_no_adapter_could_match():
    """attention, similarity and rkd compare structure and need no adapter, so shapes none could match
    (Conv1d maps (4, 64) and (16, 64)) were refused: "cannot be matched"."""
    from edgekd.distill.feature_losses import attention_loss

    student, teacher = _Sequence(4), _Sequence(16)
    pairs, adapters = match_features(teacher, student, [("conv", "conv")], IN_SHAPE, adapt=[False])
    assert pairs[0].adapter == "none" and isinstance(adapters[pairs[0].key], nn.Identity)
    with pytest.raises(FeatureError, match="cannot be matched"):  # an element-wise loss would need one
        match_features(teacher, student, [("conv", "conv")], IN_SHAPE, adapt=[True])
    x = batch(8)
    with FeatureTap(student, ["conv"], role="student") as s_tap, FeatureTap(teacher, ["conv"], role="teacher") as t:
        student(x)
        teacher(x)
        assert torch.isfinite(attention_loss(s_tap["conv"], t["conv"]))


def test_match_features_reports_bad_paths_and_unmatchable_shapes():
    teacher, mlp = model("cnn"), model("mlp")
    with pytest.raises(FeatureError, match="student model has no module named 'net.7'"):
        match_features(teacher, mlp, [("net.7", "head.1")], IN_SHAPE)
    with pytest.raises(FeatureError, match="teacher model has no module named 'heads.1'"):
        match_features(teacher, mlp, [("net.1", "heads.1")], IN_SHAPE)
    with pytest.raises(FeatureError, match="must be"):
        match_features(teacher, mlp, ["net.1"], IN_SHAPE)


def test_candidate_pairs_are_ordered_and_say_which_adapter_is_needed():
    teacher = model("cnn")
    for family in ("mlp", "tiny_cnn"):
        student = model(family)
        pairs = candidate_pairs(teacher, student, IN_SHAPE)
        assert pairs and all(isinstance(p, FeaturePair) for p in pairs)
        assert len({p.student for p in pairs}) == len(pairs)
        # the shapes are the real ones, and the adapter is the one match_features would build
        s_shapes = probe_shapes(student, [p.student for p in pairs], IN_SHAPE)
        assert s_shapes == {p.student: p.student_shape for p in pairs}
        t_shapes = probe_shapes(teacher, [p.teacher for p in pairs], IN_SHAPE)
        assert all(t_shapes[p.teacher] == p.teacher_shape for p in pairs)
        assert all(p.adapter == describe_adapter(p.student_shape, p.teacher_shape) for p in pairs)
        rows = format_pairs(pairs)
        assert len(rows) == len(pairs) and all(len(r) == len(PAIR_TABLE_HEADER) for r in rows)

    mlp_pairs = candidate_pairs(teacher, model("mlp"), IN_SHAPE)
    assert [(p.student, p.teacher, p.adapter) for p in mlp_pairs] == [("net.1", "head.1", "linear 32→128")]
    tiny_pairs = candidate_pairs(teacher, model("tiny_cnn"), IN_SHAPE)
    # execution order on both sides (ReLUs, Flatten and the logits are left out; "features" names its last child)
    assert [p.student for p in tiny_pairs] == ["features.0", "features.2", "features.3", "features"]
    assert [p.teacher for p in tiny_pairs] == ["features.1", "features.6", "features.8", "features"]
    assert tiny_pairs[-1].teacher == "features" and tiny_pairs[-1].adapter == "1×1 conv 16→128"
    assert format_pairs(tiny_pairs)[-1] == ["features", "16×2×2", "features", "128×2×2", "1×1 conv 16→128"]
