"""Quantization-aware training beyond the zoo's networks: the ONNX graph trained as a module must compute what
ONNX Runtime computes for it, whatever the architecture (shape arithmetic, LayerNorm, GELU, attention)."""
import warnings

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from slimzoo.quant import PTQConfig, integer_layers


def _tiny_convnext():
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    return ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)], num_classes=4)


def _tiny_vit():
    return torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=2,
                                                hidden_dim=16, mlp_dim=32, num_classes=4)


NETS = {"shufflenet_v2": lambda: torchvision.models.shufflenet_v2_x0_5(num_classes=4),
        "convnext": _tiny_convnext, "vit": _tiny_vit}


def _warm(m):
    torch.manual_seed(0)
    m.train()
    with torch.no_grad():
        for _ in range(2):
            m(torch.randn(8, 3, 32, 32))
    return m.eval()


@pytest.mark.parametrize("name", sorted(NETS))
def test_the_graph_as_a_module_computes_what_onnx_runtime_computes(tmp_path, name):
    import onnx

    from slimzoo.export import export_onnx, fold_batchnorm
    from slimzoo.quant.onnx_module import OnnxModule
    from slimzoo.quant.preprocess import preprocess
    from slimzoo.runtime import ort_session

    torch.manual_seed(0)
    m = _warm(NETS[name]())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = export_onnx(fold_batchnorm(m), tmp_path / "f.onnx", torch.randn(1, 3, 32, 32))
    model = onnx.load(str(path))
    preprocess(model)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        out = OnnxModule(model)(x)
    ref = ort_session(path, 1).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-3, atol=1e-4)


def test_qat_trains_and_writes_a_vision_transformer(tmp_path):
    from slimzoo.quant.qat import QATConfig, quantize_aware_train

    m = _warm(_tiny_vit())
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 4, (8,), generator=g)) for _ in range(3)]
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path, qmod = quantize_aware_train(m, torch.randn(1, 3, 32, 32), data, nn.functional.cross_entropy,
                                          [d[0] for d in data], tmp_path / "q.onnx",
                                          QATConfig(epochs=1, lr=1e-3, calibration=PTQConfig(num_calibration=16)),
                                          progress=False)
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())  # the caller's model is untouched
    check = integer_layers(path)
    assert check.float_layers == [] and check.integer == check.total > 0
    trained = qmod.float_initializers()
    assert trained  # and training moved the weights
    from slimzoo.runtime import ort_session

    x = data[0][0]
    with torch.no_grad():
        fq = qmod(x).numpy()
    out = ort_session(path, 1).run(None, {"input": x.numpy()})[0]
    assert np.corrcoef(fq.ravel(), out.ravel())[0, 1] > 0.95


def test_a_concat_group_the_writer_unifies_trains_with_one_quantizer(tmp_path):
    """Where the writer puts a Concat's inputs and output on one range (ONNX Runtime's copying QLinearConcat), QAT
    trains them with one fake quantizer, so the file computes what the trained module did."""
    from slimzoo.quant.qat import QATConfig, export_qat, prepare_qat
    from slimzoo.runtime import ort_session

    class Fire(nn.Module):
        def __init__(self):
            super().__init__()
            self.s = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU())
            self.a, self.b = nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 3, padding=1)
            self.head = nn.Conv2d(16, 4, 1)

        def forward(self, x):
            s = self.s(x)
            return self.head(torch.cat([torch.relu(self.a(s)), torch.relu(self.b(s))], 1))

    torch.manual_seed(0)
    m = Fire().eval()
    with torch.no_grad():  # the two branches' ranges within 2x of each other
        m.b.weight *= 1.2
    g = torch.Generator().manual_seed(1)
    calib = [torch.randn(8, 3, 32, 32, generator=g) for _ in range(2)]
    qmod, onnx_model, plan = prepare_qat(m, torch.randn(1, 3, 32, 32), calib,
                                         QATConfig(calibration=PTQConfig(calibration="minmax", stem="int8")))
    cat = next(n for n in onnx_model.graph.node if n.op_type == "Concat")
    group = next(grp for grp in plan.unified if cat.output[0] in grp)
    assert len({qmod.act_keys[t] for t in group}) == 1 and len(group) == 3
    ranges = qmod.act_ranges()
    assert len({ranges[t] for t in group}) == 1
    path = export_qat(qmod, onnx_model, plan, tmp_path / "q.onnx")
    x = calib[0]
    with torch.no_grad():
        fq = qmod(x).numpy()
    out = ort_session(path, 1).run(None, {"input": x.numpy()})[0]
    assert np.abs(fq - out).max() < 0.05 * np.abs(fq).max()
