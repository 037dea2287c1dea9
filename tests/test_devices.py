"""Ranks and GPUs: the device rule, the shared-GPU refusal, and options that conflict on GPU."""

import logging

import pytest

from dap_hvd.config import load_config
from dap_hvd.devices import gpu_index, shared_gpu


def test_a_ranks_gpu_is_its_local_rank_modulo_the_visible_gpus():
    assert [gpu_index(r, 8) for r in range(8)] == list(range(8))
    assert [gpu_index(r, 1) for r in range(4)] == [0, 0, 0, 0]  # one GPU per task: each sees device 0
    with pytest.raises(ValueError):
        gpu_index(0, 0)


def test_two_ranks_of_one_host_on_one_gpu_are_refused_naming_the_counts():
    # per-task binding: every rank sees "device 0", but each is a different physical GPU
    assert shared_gpu([("n1", "GPU-a"), ("n1", "GPU-b"), ("n2", "GPU-a")], 2, 1) is None
    msg = shared_gpu([("n1", "GPU-a"), ("n1", "GPU-a")], 2, 1)
    assert "ranks [0, 1] on n1 would share GPU GPU-a" in msg and "2 local ranks but 1 visible GPU" in msg


def test_sync_bn_turns_channels_last_off_on_gpu(caplog):
    import torch

    from dap_hvd.train import _precision

    cuda = torch.device("cuda", 0)  # only its type is read: no GPU needed
    assert _precision(load_config(None, {}), cuda).channels_last  # auto: on, on a GPU
    with caplog.at_level(logging.WARNING, logger="dap_hvd"):
        p = _precision(load_config(None, {"sync_bn": True, "channels_last": "on"}), cuda)
    assert not p.channels_last and "SyncBatchNorm" in caplog.text
    assert not _precision(load_config(None, {"sync_bn": True}), cuda).channels_last


def test_fp16_amp_with_fp16_allreduce_is_refused():
    from dap_hvd import ConfigError

    with pytest.raises(ConfigError, match=r"--fp16-allreduce.*--amp fp16.*overflow"):
        load_config(None, {"amp": "fp16", "fp16_allreduce": True})
    assert load_config(None, {"amp": "bf16", "fp16_allreduce": True}).optim.fp16_allreduce
