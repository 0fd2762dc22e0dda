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
