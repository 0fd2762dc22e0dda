import os

import pytest
import torch

# one thread per pytest-xdist worker (make test runs two on the two cores), two otherwise
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)


@pytest.fixture(scope="session")
def synth_cls(tmp_path_factory):
    """A tiny synthetic classification dataset in the list format."""
    from slimzoo.data.synth_cls import write_synth_cls

    return write_synth_cls(tmp_path_factory.mktemp("synth") / "cls", num_train=96, num_val=48, size=40, seed=0,
                           progress=False)


@pytest.fixture(scope="session")
def _trained_mbv2_state(synth_cls):
    """MobileNetV2 (width 0.25) trained two epochs on ``synth_cls`` at 32x32, once per test process."""
    import slimzoo
    from slimzoo.tasks import get_task
    from slimzoo.training import TrainConfig, fit

    task = get_task("classification", data_root=synth_cls, image_size=32, batch_size=16, num_workers=0)
    torch.manual_seed(0)
    model = slimzoo.create_model("mobilenet_v2", num_classes=task.num_classes, width_mult=0.25)
    model = fit(model, task.train_loader(), task.loss_fn, TrainConfig(epochs=2, channels_last=False), progress=False)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture
def trained_classifier(synth_cls, _trained_mbv2_state):
    """(task, model): the shared tiny trained classifier, a fresh copy for each test (tests may change it)."""
    import slimzoo
    from slimzoo.tasks import get_task

    task = get_task("classification", data_root=synth_cls, image_size=32, batch_size=16, num_workers=0)
    model = slimzoo.create_model("mobilenet_v2", num_classes=task.num_classes, width_mult=0.25)
    model.load_state_dict(_trained_mbv2_state)
    return task, model.eval()
