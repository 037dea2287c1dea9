"""Ranks and GPUs: the device rule, the shared-GPU refusal, options that conflict on GPU, the CPU
binding of GPU ranks (recorded node topologies), the JPEG decoder line, and the cache folder."""

import logging
import os
import subprocess
import sys

import pytest
from conftest import REPO

from dap_hvd import affinity
from dap_hvd.affinity import Topology, format_cpulist, parse_cpulist, plan
from dap_hvd.config import load_config
from dap_hvd.hardware import gpu_index, jpeg_decoder, shared_gpu

# Recorded topologies: the "CPU Affinity" column of `nvidia-smi topo -m` (NVML's
# nvmlDeviceGetCpuAffinity) for GPUs 0-7, and the hyperthread pairs of the node's CPUs.
DGX1 = dict(  # 2 sockets x 20 cores x 2 threads; GPUs 0-3 on socket 0, 4-7 on socket 1
    gpus=["0-19,40-59"] * 4 + ["20-39,60-79"] * 4, cpus=80, threads=2)
DGX_H100 = dict(  # 2 sockets x 56 cores x 2 threads
    gpus=["0-55,112-167"] * 4 + ["56-111,168-223"] * 4, cpus=224, threads=2)
DGX_A100 = dict(  # 2 sockets x 64 cores x 2 threads, NPS4: 8 NUMA nodes, 2 GPUs on each of 4
    gpus=["48-63,176-191"] * 2 + ["16-31,144-159"] * 2 + ["112-127,240-255"] * 2 + ["80-95,208-223"] * 2,
    cpus=256, threads=2)


def _topology(rec: dict, allowed=None) -> Topology:
    half = rec["cpus"] // rec["threads"]
    cores = tuple(frozenset({c, c + half}) for c in range(half))
    return Topology(tuple(parse_cpulist(g) for g in rec["gpus"]), cores,
                    frozenset(range(rec["cpus"])) if allowed is None else frozenset(allowed))


def _check_partition(sets, topo):
    """Each GPU's CPUs: near it, usable, whole physical cores, disjoint from the others', equal in size."""
    core_of = {c: core for core in topo.cores for c in core}
    for gpu, cpus in enumerate(sets):
        assert cpus and cpus <= topo.gpu_cpus[gpu] & topo.allowed
        assert all(core_of[c] & topo.allowed <= cpus for c in cpus)  # hyperthread siblings together
    for a in range(len(sets)):
        for b in range(a + 1, len(sets)):
            assert not sets[a] & sets[b]
    assert len({len(c) for c in sets}) == 1


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

    from dap_hvd.hardware import choose_precision

    cuda = torch.device("cuda", 0)  # only its type is read: no GPU needed
    assert choose_precision(load_config(None, {}), cuda).channels_last  # auto: on, on a GPU
    with caplog.at_level(logging.WARNING, logger="dap_hvd"):
        p = choose_precision(load_config(None, {"sync_bn": True, "channels_last": "on"}), cuda)
    assert not p.channels_last and "SyncBatchNorm" in caplog.text
    assert not choose_precision(load_config(None, {"sync_bn": True}), cuda).channels_last


def test_fp16_amp_with_fp16_allreduce_is_refused():
    from dap_hvd import ConfigError

    with pytest.raises(ConfigError, match=r"--fp16-allreduce.*--amp fp16.*overflow"):
        load_config(None, {"amp": "fp16", "fp16_allreduce": True})
    assert load_config(None, {"amp": "bf16", "fp16_allreduce": True}).optim.fp16_allreduce


def test_cpu_binding_on_a_dgx1_splits_each_socket_among_its_four_gpus():
    topo = _topology(DGX1)
    sets = plan(topo)
    _check_partition(sets, topo)
    assert [format_cpulist(c) for c in sets] == [
        "0-4,40-44", "5-9,45-49", "10-14,50-54", "15-19,55-59",
        "20-24,60-64", "25-29,65-69", "30-34,70-74", "35-39,75-79"]


def test_cpu_binding_on_dgx_h100_and_a100():
    topo = _topology(DGX_H100)
    sets = plan(topo)
    _check_partition(sets, topo)
    assert format_cpulist(sets[0]) == "0-13,112-125" and format_cpulist(sets[7]) == "98-111,210-223"
    topo = _topology(DGX_A100)
    sets = plan(topo)
    _check_partition(sets, topo)  # two GPUs per NUMA node: 8 of its 16 cores each; half the
    # node's CPUs are near no GPU, and stay unused, as DeepLearningExamples warns for the DGX A100
    assert [format_cpulist(c) for c in sets[:2]] == ["48-55,176-183", "56-63,184-191"]
    assert format_cpulist(sets[4]) == "112-119,240-247"


def test_cpu_binding_within_a_smaller_cpu_set():
    # This rank may use 6 cores of socket 0 (and their siblings): a SLURM task bound to its cores,
    # seeing all 8 GPUs. Its set may be its own, so it is not split further: the ranks of GPUs
    # 0-3 keep it; GPUs 4-7 have none of their near CPUs in it: left alone, and the log says why.
    allowed = set(range(6)) | set(range(40, 46))
    topo = _topology(DGX1, allowed)
    sets = plan(topo)
    assert sets[:4] == [frozenset(allowed)] * 4 and sets[4:] == [None] * 4
    b = affinity.choose(topo, 5)
    assert b.cpus is None and "none of GPU 5's near CPUs (20-39,60-79)" in b.note
    # per-task GPU binding too (one visible GPU): the task keeps the cores it was given
    topo = Topology((parse_cpulist("0-19,40-59"),), _topology(DGX1).cores, frozenset({4, 44}))
    assert plan(topo) == [frozenset({4, 44})]
    assert affinity.choose(None, 0).cpus is None


def test_cpu_binding_with_fewer_cores_than_gpus_on_a_socket():
    # 3 cores near 4 GPUs: no unique block for each, so every GPU's rank gets the whole set
    rec = dict(gpus=["0-2,3-5"] * 4, cpus=6, threads=2)
    topo = _topology(rec)
    assert plan(topo) == [frozenset(range(6))] * 4


def test_topology_is_read_from_sysfs_files(tmp_path):
    """read_topology on a recorded sysfs tree (the files and formats of /sys), then on this machine."""
    for i, cpus in enumerate(DGX1["gpus"]):
        d = tmp_path / "bus/pci/devices" / f"0000:{0x07 + i:02x}:00.0"
        d.mkdir(parents=True)
        (d / "local_cpulist").write_text(cpus + "\n")
    for c in range(80):
        t = tmp_path / "devices/system/cpu" / f"cpu{c}" / "topology"
        t.mkdir(parents=True)
        (t / "thread_siblings_list").write_text(f"{c % 40},{c % 40 + 40}\n")
    topo = affinity.read_topology([f"0000:{0x07 + i:02X}:00.0" for i in range(8)], sys_root=tmp_path)
    assert topo.gpu_cpus == _topology(DGX1).gpu_cpus and set(topo.cores) == set(_topology(DGX1).cores)
    assert topo.allowed == frozenset(os.sched_getaffinity(0))
    assert affinity.read_topology(["0000:ff:00.0"], sys_root=tmp_path) is None  # no such device
    assert parse_cpulist("0-3,8,10-11") == {0, 1, 2, 3, 8, 10, 11} and format_cpulist({0, 1, 2, 3, 8}) == "0-3,8"


def test_thread_counts_follow_the_cpuset_not_the_machine():
    """os.cpu_count() ignores cpusets and cgroups; a rank restricted to 1 CPU sees 1."""
    code = ("import os; from dap_hvd.affinity import cpus_per_rank; os.sched_setaffinity(0, {0}); "
            "print(os.cpu_count(), cpus_per_rank(1, bound=False), cpus_per_rank(4, bound=False), "
            "cpus_per_rank(4, bound=True))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)}).stdout.split()
    assert out[1:] == ["1", "1", "1"]


def test_the_jpeg_decoder_line_names_the_backend_and_the_missing_video_capability():
    line, warn = jpeg_decoder(loader="dali", dali_device="auto", gpu=True, hw_decoder_load=None,
                              driver_capabilities="compute,utility")
    assert warn and "lacks 'video'" in line and "0.65" in line
    line, warn = jpeg_decoder(loader="dali", dali_device="auto", gpu=True, hw_decoder_load=0.9,
                              driver_capabilities="compute,utility,video")
    assert not warn and "hardware decoder for 0.9" in line
    assert not jpeg_decoder(loader="dali", dali_device="auto", gpu=True, hw_decoder_load=0,
                            driver_capabilities="compute")[1]  # no hardware share asked for
    assert "cpu backend" in jpeg_decoder(loader="dali", dali_device="cpu", gpu=True, hw_decoder_load=None,
                                         driver_capabilities=None)[0]
    assert "torch loader" in jpeg_decoder(loader="torch", dali_device="auto", gpu=False, hw_decoder_load=None,
                                          driver_capabilities=None)[0]
    # the image asks for the capability
    assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility,video" in (REPO / "Dockerfile").read_text()


@pytest.mark.skipif(os.geteuid() != 0, reason="a read-only bind mount needs root")
def test_an_unwritable_cache_falls_back_with_one_warning(tiny_data, tmp_path):
    """The image's baked DAP_HVD_CACHE under another user is a folder nobody can write: the
    manifest cache lands in ~/.cache/dap-hvd instead, with one warning (root bypasses modes,
    so the folder is a read-only mount here)."""
    baked, home = tmp_path / "baked", tmp_path / "home"
    baked.mkdir()
    home.mkdir()
    code = ("from dap_hvd.data.catalog import load_catalog, cache_root; import sys; "
            f"load_catalog({str(tiny_data)!r}, 'train'); load_catalog({str(tiny_data)!r}, 'val'); print(cache_root())")
    ro_mount = f"mount --bind {baked} {baked} && mount -o remount,bind,ro {baked}"
    p = subprocess.run(["unshare", "-m", "sh", "-c", f"{ro_mount} && exec {sys.executable} -c \"{code}\""],
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(REPO), "DAP_HVD_CACHE": str(baked), "HOME": str(home)})
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == [str(home / ".cache" / "dap-hvd")]
    assert p.stderr.count("is not writable") == 1 and str(baked) in p.stderr, p.stderr
    assert len(list((home / ".cache" / "dap-hvd" / "manifests").glob("*.json"))) == 2
