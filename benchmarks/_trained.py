"""torchvision architectures trained on the zoo's synthetic classification set, for benchmarks with a real
accuracy signal (the zoo's own rows are slimzoo's registry models). Trained once, cached as safetensors."""
from __future__ import annotations

from pathlib import Path

import torch

# epochs chosen like the zoo's classifier rows (64x64 inputs, 8,000 training images), lr as for MobileNetV2
TRAIN = {"epochs": 4, "batch_size": 64, "lr": 0.002}


def torchvision_model(name: str, num_classes: int):
    import torchvision

    extra = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
    return getattr(torchvision.models, name)(num_classes=num_classes, **extra)


def trained(zoo, name: str, cache: Path, epochs: int | None = None):
    """(model, task): torchvision ``name`` trained on the zoo's ``synth-cls`` (the cls-mobilenet_v2-none row's data
    and resolution), from ``cache`` when there."""
    from safetensors.torch import save_file

    from slimzoo.storage import load_weights
    from slimzoo.training import TrainConfig, fit

    task = zoo.task(zoo.recipe("cls-mobilenet_v2-none"))
    tcfg = TrainConfig.from_dict({**TRAIN, **({"epochs": epochs} if epochs else {})})
    torch.manual_seed(tcfg.seed)
    model = torchvision_model(name, task.num_classes)
    path = Path(cache) / f"{name}-e{tcfg.epochs}.safetensors"
    if path.is_file():
        load_weights(model, path)
        return model.eval(), task
    path.parent.mkdir(parents=True, exist_ok=True)
    print(f"training {name} on synth-cls for {tcfg.epochs} epochs", flush=True)
    model = fit(model, task.train_loader(tcfg.batch_size), task.loss_fn, tcfg,
                state_path=path.with_suffix(".state.pt"), progress=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    path.with_suffix(".state.pt").unlink(missing_ok=True)
    return model.eval(), task
