import pytest
import torch

from adkit.collect import collect
from adkit.config import load_config

torch.set_num_threads(1)  # tests run beside each other on small machines; avoid thread oversubscription


@pytest.fixture(scope="session")
def tiny_cfg():
    return load_config("tiny")


@pytest.fixture(scope="session")
def tiny_hist(tiny_cfg):
    return collect(tiny_cfg, progress=False)
