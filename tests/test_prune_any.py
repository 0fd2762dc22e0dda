"""Pruning networks slimzoo was not built for: grouped convs, channel shuffle, attention, thin layers."""
import warnings

import pytest
import torch
from torch import nn

from slimzoo.errors import ConfigError
from slimzoo.prune import PruneConfig, channels_to_keep, prune, replay


def _uniform(target, **kw):
    return PruneConfig(method="uniform", flops_reduction=target, **kw)


def _replays_exactly(make, pruned, rec, x):
    fresh = make().eval()
    replay(fresh, rec)
    fresh.load_state_dict(pruned.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(x), pruned(x))


class Grouped(nn.Module):
    """A ResNeXt-style block: 1x1, grouped 3x3 (4 groups), 1x1, and a residual add."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.a = nn.Conv2d(32, 64, 1)
        self.g = nn.Conv2d(64, 64, 3, padding=1, groups=4)
        self.b = nn.Conv2d(64, 32, 1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = x + self.b(torch.relu(self.g(torch.relu(self.a(x)))))
        return self.fc(x.mean((2, 3)))


def test_grouped_convolutions_keep_their_groups():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 16, 16)
    pruned, rec, info = prune(Grouped().eval(), x, _uniform(0.3))
    assert pruned.g.groups == 4 and pruned.g.out_channels % 4 == 0 and pruned.g.out_channels < 64
    assert abs(info["flops_reduction"] - 0.3) <= 0.02
    _replays_exactly(Grouped, pruned, rec, x)
    assert channels_to_keep(64, 0.3, 8, divisor=4) % 4 == 0


def test_thin_network_lands_within_two_points_of_the_target():
    def make():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.ReLU(), nn.Conv2d(12, 20, 3, padding=1), nn.ReLU(),
                             nn.Conv2d(20, 12, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(12, 10)).eval()
    x = torch.randn(1, 3, 16, 16)
    for target in (0.3, 0.5):
        pruned, rec, info = prune(make(), x, _uniform(target))
        assert abs(info["flops_reduction"] - target) <= 0.02, info
        _replays_exactly(make, pruned, rec, x)


def test_channel_shuffle_prunes_inside_branches_and_says_what_it_left():
    from torchvision.models import shufflenet_v2_x0_5

    def make():
        torch.manual_seed(0)
        return shufflenet_v2_x0_5(num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruned, rec, info = prune(make(), x, _uniform(0.2))
    assert rec.steps and any("reshape" in why for why in info["left_unpruned"].values())
    # inside the branches, the stem and the last conv; nothing whose channels cross a shuffle
    assert all(".branch2.0" in s["layer"] or s["layer"] in ("conv1.0", "conv5.0") for s in rec.steps)
    _replays_exactly(make, pruned, rec, x)


def test_vision_transformer_prunes_mlp_width_not_the_residual_stream():
    from torchvision.models import VisionTransformer

    def make():
        torch.manual_seed(0)
        return VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=128,
                                 num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    pruned, rec, info = prune(make(), x, _uniform(0.2))
    assert rec.steps and all(".mlp." in s["layer"] for s in rec.steps)
    assert "conv_proj" in info["left_unpruned"]
    _replays_exactly(make, pruned, rec, x)


def test_ignored_layers_are_kept_and_unknown_names_refused():
    x = torch.randn(1, 3, 16, 16)
    pruned, rec, _ = prune(Grouped().eval(), x, _uniform(0.2), ignored=["a"])
    assert pruned.a.out_channels == 64 and all(s["layer"] != "a" for s in rec.steps)
    with pytest.raises(ConfigError, match="'nope' does not exist"):
        prune(Grouped().eval(), x, _uniform(0.2), ignored=["nope"])


def test_untraceable_model_is_one_sentence():
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.c = nn.Conv2d(3, 8, 3)

        def forward(self, x):
            return self.c(x).view(7, -1)  # fails on this input

    with pytest.raises(ConfigError, match="cannot be traced for pruning"):
        prune(Bad().eval(), torch.randn(1, 3, 8, 8), _uniform(0.3))
