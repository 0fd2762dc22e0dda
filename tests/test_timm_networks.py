"""timm architectures slimzoo was not built for (random weights, small inputs): export, INT8 and pruning.

Each one broke something once: DeiT's fused attention the exporter, MobileViT's control flow torch.fx (and its
zero-initialised residual layers, written once behind an Identity, the quantization plan), NF-RegNet's weights
standardized in the graph at run time (the plan, which quantizes constant weights), GhostNet's fixed channel counts
the pruner."""
import warnings

import numpy as np
import pytest
import torch

from slimzoo.prune import PruneConfig, prune
from slimzoo.quant import PTQConfig, integer_layers, quantize

timm = pytest.importorskip("timm")


def _model(name: str, **kw):
    torch.manual_seed(0)
    m = timm.create_model(name, pretrained=False, num_classes=10, **kw).train()
    with torch.no_grad():  # BatchNorm statistics of the inputs, as a trained model would have
        for _ in range(2):
            m(torch.randn(8, 3, 64, 64))
    return m.eval()


@pytest.mark.parametrize(("name", "kw"), [("deit_tiny_patch16_224", {"img_size": 64}), ("mobilevit_xxs", {}),
                                         ("nf_regnet_b0", {})])
def test_quantizes_with_every_weighted_layer_integer(tmp_path, name, kw):
    from slimzoo.runtime import ort_session

    m = _model(name, **kw)
    x = torch.randn(1, 3, 64, 64)
    g = torch.Generator().manual_seed(1)
    path = quantize(m, x, [torch.randn(8, 3, 64, 64, generator=g) for _ in range(2)], tmp_path / "q.onnx",
                    PTQConfig(stem="int8"), check=False)
    check = integer_layers(path)
    assert check.float_layers == [] and check.integer == check.total > 0, check
    xt = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        ref = m(xt).numpy()
    out = ort_session(path, 1).run(None, {"input": xt.numpy()})[0]
    assert np.corrcoef(ref.ravel(), out.ravel())[0, 1] > 0.9


def test_ghostnet_prunes_with_the_groups_it_cannot_prune_left_whole():
    m = _model("ghostnet_100")
    x = torch.randn(1, 3, 64, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruned, rec, info = prune(m, x, PruneConfig(flops_reduction=0.3, method="uniform"))
    broken = [n for n, why in info["left_unpruned"].items() if "breaks the model's forward pass" in why]
    assert broken and not set(broken) & set(rec.ratios)
    assert abs(info["flops_reduction"] - 0.3) <= 0.02
    with torch.no_grad():
        assert pruned(x).shape == (1, 10)

