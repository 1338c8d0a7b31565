"""Structured/unstructured pruning: requested sparsity reached, permanent, model still runs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from med_core.models import build_classifier
from med_core.optimization import prune_model


@pytest.fixture
def classifier() -> nn.Module:
    torch.manual_seed(0)
    return build_classifier({"backbone": "resnet18"}, num_classes=2, in_chans=1, img_size=28)


def _convs(model: nn.Module) -> dict[str, nn.Conv2d]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def test_structured_pruning_zeroes_half_the_filters_of_every_conv(
    classifier: nn.Module, breast: dict[str, torch.Tensor]
) -> None:
    keys = set(classifier.state_dict())
    head = classifier.head[1].weight.detach().clone()  # type: ignore[index, union-attr]
    model, report = prune_model(classifier, 0.5)
    assert model is classifier

    convs = _convs(model)
    assert set(report.layers) == set(convs) and len(convs) == 20
    for name, conv in convs.items():
        dead = (conv.weight.flatten(1) == 0).all(dim=1)
        assert int(dead.sum()) == round(0.5 * conv.out_channels), name  # whole filters
        assert report.layers[name] == pytest.approx(0.5)
    assert report.sparsity == pytest.approx(0.5)
    assert report.channels_pruned == report.channels_total // 2
    assert report.structured and not report.fine_tuned
    assert 0.45 < report.model_sparsity < 0.5  # BN and the head are not pruned
    torch.testing.assert_close(model.head[1].weight, head)  # type: ignore[index, union-attr]

    # permanent: no masks, no hooks, the same parameters as before
    assert set(model.state_dict()) == keys
    assert all(not m._forward_pre_hooks for m in model.modules())
    model.eval()
    with torch.no_grad():
        out = model(breast["test"][:8])
    assert out.shape == (8, 2) and torch.isfinite(out).all()


def test_fine_tune_runs_with_masks_active_and_keeps_the_sparsity(
    tiny: nn.Module, breast: dict[str, torch.Tensor]
) -> None:
    calls: list[int] = []

    def fine_tune(model: nn.Module) -> None:
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        x, y = breast["train"][:16], breast["train_labels"][:16]
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()  # large steps: the masks must still hold pruned weights at zero
        calls.append(1)

    _, report = prune_model(tiny, 0.25, fine_tune=fine_tune)
    assert calls == [1] and report.fine_tuned
    assert report.channels_pruned == 4  # 2 of 8 filters in each of the 2 convs
    for name, conv in _convs(tiny).items():
        dead = (conv.weight.flatten(1) == 0).all(dim=1)
        assert int(dead.sum()) == round(0.25 * conv.out_channels), name


def test_unstructured_pruning_reaches_the_sparsity_in_conv_and_linear() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 16, 3), nn.Flatten(), nn.Linear(16 * 26 * 26, 2))
    _, report = prune_model(model, 0.3, structured=False)
    assert set(report.layers) == {"0", "2"}
    assert report.sparsity == pytest.approx(0.3, abs=1e-3)
    assert float((model[2].weight == 0).float().mean()) == pytest.approx(0.3, abs=1e-3)
    assert report.channels_total == 0


def test_excluded_layers_are_not_pruned(classifier: nn.Module) -> None:
    stem = next(iter(_convs(classifier)))
    _, report = prune_model(classifier, 0.5, exclude=(stem,))
    assert stem not in report.layers
    assert not (classifier.get_submodule(stem).weight == 0).any()


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"sparsity": 1.0}, ValueError, r"sparsity must be in \[0, 1\), got 1.0"),
        ({"sparsity": -0.1}, ValueError, r"sparsity must be in \[0, 1\), got -0.1"),
        ({"sparsity": "half"}, TypeError, "sparsity must be a float"),
        ({"sparsity": 0.5, "exclude": ("nope",)}, ValueError, r"does not have: \['nope'\]"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, error: type[Exception], message: str) -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3))
    before = model[0].weight.detach().clone()
    with pytest.raises(error, match=message):
        prune_model(model, **kwargs)
    torch.testing.assert_close(model[0].weight, before)  # untouched


def test_model_without_prunable_layers_raises() -> None:
    with pytest.raises(ValueError, match="has no convolution layer to prune"):
        prune_model(nn.Sequential(nn.Linear(4, 2)), 0.5)
