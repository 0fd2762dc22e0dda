import pytest
import torch

import slimzoo
from slimzoo.errors import CheckpointError, ConfigError

CANONICAL_PARAMS = {"mobilenet_v1": 4_231_976, "mobilenet_v2": 3_504_872, "resnet50": 25_557_032,
                    "resnet34": 21_797_672}


@pytest.mark.parametrize("name", slimzoo.list_models(task="classification"))
def test_tiny_forward_shape(name):
    m = slimzoo.create_model(name, num_classes=7, width_mult=0.25).eval()
    with torch.no_grad():
        assert m(torch.randn(2, 3, 32, 32)).shape == (2, 7)


@pytest.mark.parametrize("name", sorted(CANONICAL_PARAMS))
def test_canonical_param_count(name):
    m = slimzoo.create_model(name, num_classes=1000)
    assert sum(p.numel() for p in m.parameters()) == CANONICAL_PARAMS[name]


def test_registry_lists_and_rejects_unknown():
    assert {"mobilenet_v1", "mobilenet_v2", "resnet50", "resnet34"} <= set(slimzoo.list_models())
    assert slimzoo.list_models("mobilenet*") == ["mobilenet_v1", "mobilenet_v2"]
    with pytest.raises(ConfigError, match="unknown model"):
        slimzoo.create_model("mobilenet_v9")


@pytest.mark.parametrize("name,builder", [("mobilenet_v2", "mobilenet_v2"), ("resnet50", "resnet50")])
@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_loads_torchvision_state_dict(tmp_path, name, builder, fmt):
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(0)
    tv = getattr(torchvision.models, builder)(weights=None).eval()
    path = tmp_path / f"tv.{fmt}"
    if fmt == "pth":
        torch.save(tv.state_dict(), path)
    else:
        save_file({k: v.contiguous() for k, v in tv.state_dict().items()}, str(path))
    ours = slimzoo.create_model(name, num_classes=1000, weights=str(path)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv(x))


def test_shape_mismatch_is_a_clear_error(tmp_path):
    from slimzoo.storage import save_state_dict

    save_state_dict(slimzoo.create_model("mobilenet_v1", num_classes=10, width_mult=0.25), tmp_path / "w.safetensors")
    with pytest.raises(CheckpointError, match="do not match the model's shapes"):
        slimzoo.create_model("mobilenet_v1", num_classes=12, width_mult=0.25, weights=str(tmp_path / "w.safetensors"))


def test_malicious_pickle_is_refused(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"x": Evil()}, f)
    with pytest.raises(CheckpointError, match="refused"):
        slimzoo.create_model("mobilenet_v1", num_classes=10, width_mult=0.25, weights=str(path))


def test_import_is_light():
    import subprocess
    import sys

    code = "import sys, slimzoo; print('onnxruntime' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]
