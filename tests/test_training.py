import pytest
import torch

import slimzoo
from slimzoo.errors import ConfigError
from slimzoo.tasks import get_task
from slimzoo.training import TrainConfig, fit


class _Stop(Exception):
    pass


def _setup(synth_cls):
    task = get_task("classification", data_root=synth_cls, image_size=32, batch_size=16, num_workers=0)
    torch.manual_seed(0)
    model = slimzoo.create_model("mobilenet_v1", num_classes=task.num_classes, width_mult=0.25)
    return task, model


def test_interrupted_training_resumes_to_the_same_weights(tmp_path, synth_cls):
    cfg = TrainConfig(epochs=2, channels_last=False)
    task, model = _setup(synth_cls)
    straight = fit(model, task.train_loader(), task.loss_fn, cfg, progress=False)

    def stop_after_first(epoch, _):
        if epoch == 0:
            raise _Stop

    state = tmp_path / "state.pt"
    task, model = _setup(synth_cls)
    with pytest.raises(_Stop):
        fit(model, task.train_loader(), task.loss_fn, cfg, state_path=state, progress=False,
            on_epoch_end=stop_after_first)
    assert state.is_file()
    task, fresh = _setup(synth_cls)  # a new process would start from a fresh model
    resumed = fit(fresh, task.train_loader(), task.loss_fn, cfg, state_path=state, progress=False)
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)


def test_train_config_rejects_unknown_keys():
    with pytest.raises(ConfigError, match="unknown training setting"):
        TrainConfig.from_dict({"epochs": 1, "learning_rate": 0.1})


def test_cuda_device_is_a_clear_error_without_a_gpu_and_cpu_keeps_result_keys():
    from slimzoo.errors import ConfigError
    from slimzoo.training import TrainConfig, resolve_device

    assert "device" not in TrainConfig().to_dict()  # where it runs does not change the zoo's result keys
    assert TrainConfig(device="cuda:1").to_dict()["device"] == "cuda:1"
    with pytest.raises(ConfigError, match="device must be"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")
def test_training_and_evaluation_on_a_gpu(synth_cls):
    from slimzoo.models import create_model
    from slimzoo.runtime import TorchPredictor
    from slimzoo.tasks import get_task
    from slimzoo.training import TrainConfig, fit

    task = get_task("classification", data_root=synth_cls, image_size=32, batch_size=16, num_workers=0)
    model = fit(create_model("mobilenet_v1", num_classes=10, width_mult=0.25), task.train_loader(), task.loss_fn,
                TrainConfig(epochs=1, batch_size=16, device="cuda"), progress=False)
    assert next(model.parameters()).device.type == "cpu"  # handed back on the CPU, ready to export
    assert task.evaluate(TorchPredictor(model, "cuda"))["num_images"] == 48


def test_autocast_training_keeps_depthwise_convs_in_float32_and_leaves_the_model_as_it_was():
    from slimzoo.training import depthwise_in_float32

    torch.manual_seed(0)
    model = slimzoo.create_model("mobilenet_v2", num_classes=4, width_mult=0.25)
    dtypes = {}
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: dtypes.__setitem__(n, (m.groups > 1, o.dtype)))
             for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    x = torch.randn(2, 3, 32, 32)
    with depthwise_in_float32(model), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    out.float().sum().backward()  # gradients flow through the float32 layers
    assert {dt for dw, dt in dtypes.values() if dw} == {torch.float32}
    assert {dt for dw, dt in dtypes.values() if not dw} == {torch.bfloat16}
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert not any("forward" in m.__dict__ for m in model.modules())  # nothing left behind (export, pickling)
    with depthwise_in_float32(model, enabled=False), torch.autocast("cpu", dtype=torch.bfloat16):
        model(x)
    assert {dt for dw, dt in dtypes.values()} == {torch.bfloat16}
    for h in hooks:
        h.remove()
