"""CPU binding for GPU ranks: each rank's threads run on cores next to its GPU. Pure Python.

A rank's DALI threads read files, run the host half of JPEG decoding and fill pinned buffers
that its GPU reads over PCIe; on a two-socket node, threads on the far socket pay for every byte
twice. NVIDIA's DeepLearningExamples bind each rank with NVML's CPU affinity of its GPU
(gpu_affinity.py, mode socket_unique_contiguous, their recommendation for DGX machines): the
cores of the GPU's socket/NUMA node, that this process may use, split into contiguous blocks of
whole physical cores (hyperthread siblings together), one block per GPU that shares them, the
same number of cores for every GPU. `plan` is that mapping, from topology data to CPU sets;
`read_topology` reads the data from sysfs: a PCI device's local_cpulist is the kernel's record of
the CPUs near it, the mask NVML's nvmlDeviceGetCpuAffinity reports on Linux.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

SYS = Path("/sys")
# torch's intra-op pool on a GPU rank serves small host-side ops only; more threads spin against
# the rank's DALI threads for the same cores.
GPU_RANK_TORCH_THREADS = 4


@dataclass(frozen=True)
class Topology:
    gpu_cpus: tuple[frozenset[int], ...]  # per visible GPU (in CUDA's order): the CPUs near it
    cores: tuple[frozenset[int], ...]  # physical cores: each the set of its hyperthreads
    allowed: frozenset[int]  # the CPUs this process may use (cpuset, cgroup, scheduler binding)


@dataclass(frozen=True)
class Binding:
    cpus: Optional[frozenset[int]]  # None: leave the affinity as it is
    note: str  # one line for the log: what was bound, or why not


def parse_cpulist(text: str) -> frozenset[int]:
    """'0-3,8,10-11' (the kernel's list format) -> {0, 1, 2, 3, 8, 10, 11}."""
    out: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return frozenset(out)


def format_cpulist(cpus) -> str:
    """The inverse of parse_cpulist: {0, 1, 2, 3, 8} -> '0-3,8'."""
    runs, start, prev = [], None, None
    for c in sorted(cpus):
        if start is None:
            start = prev = c
        elif c == prev + 1:
            prev = c
        else:
            runs.append((start, prev))
            start = prev = c
    if start is not None:
        runs.append((start, prev))
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def plan(topo: Topology) -> list[Optional[frozenset[int]]]:
    """For each visible GPU, the CPUs its rank binds to (None: no binding for it).

    GPUs whose near-CPU sets are equal share them: the physical cores are split in contiguous
    blocks, every GPU of the node getting as many cores as the most crowded socket allows. That
    split assumes every rank of the node may use every CPU near the GPUs (a whole node, or a job
    cpuset that covers them). A smaller set may be this rank's own (SLURM's per-task binding):
    then the rank keeps the CPUs of that set near its GPU, unsplit, or nothing to bind to when
    there are none. Near sets that overlap without being equal (an odd topology), or a socket
    with fewer cores than GPUs, get no split either."""
    core_of = {cpu: core for core in topo.cores for cpu in core}
    usable = [frozenset(c & topo.allowed) for c in topo.gpu_cpus]
    if not topo.allowed >= frozenset().union(*topo.gpu_cpus):
        return [c or None for c in usable]
    groups: dict[frozenset[int], list[int]] = {}
    for gpu, cpus in enumerate(usable):
        groups.setdefault(cpus, []).append(gpu)
    sets = list(groups)
    if any(a != b and a & b for a in sets for b in sets):
        return [c or None for c in usable]
    cores_by_group = {
        cpus: sorted({frozenset(core_of.get(c, frozenset([c])) & cpus) for c in cpus}, key=min)
        for cpus in sets if cpus
    }
    per_gpu = min((len(cores) // len(groups[cpus]) for cpus, cores in cores_by_group.items()), default=0)
    out: list[Optional[frozenset[int]]] = [None] * len(usable)
    for cpus, gpus in groups.items():
        if not cpus:
            continue
        if per_gpu == 0:
            for gpu in gpus:
                out[gpu] = cpus
            continue
        cores = cores_by_group[cpus]
        for i, gpu in enumerate(gpus):
            out[gpu] = frozenset().union(*cores[i * per_gpu:(i + 1) * per_gpu])
    return out


def read_topology(pci_addresses: Sequence[str], sys_root: Path = SYS) -> Optional[Topology]:
    """The node's topology for these GPUs ('0000:1b:00.0', in CUDA's device order), or None
    when sysfs does not say (not Linux, a container without /sys, a virtual GPU)."""
    try:
        gpu_cpus = tuple(parse_cpulist((sys_root / "bus/pci/devices" / a.lower() / "local_cpulist").read_text())
                         for a in pci_addresses)
        cores = set()
        for d in (sys_root / "devices/system/cpu").glob("cpu[0-9]*"):
            siblings = d / "topology/thread_siblings_list"
            if siblings.is_file():
                cores.add(parse_cpulist(siblings.read_text()))
    except (OSError, ValueError):
        return None
    return Topology(gpu_cpus, tuple(sorted(cores, key=min)), frozenset(os.sched_getaffinity(0)))


def choose(topo: Optional[Topology], gpu: int) -> Binding:
    if topo is None:
        return Binding(None, "no CPU binding: sysfs does not give the GPUs' CPU affinity here")
    cpus = plan(topo)[gpu]
    if cpus is None:
        return Binding(None, f"no CPU binding: none of GPU {gpu}'s near CPUs "
                             f"({format_cpulist(topo.gpu_cpus[gpu])}) is in this process's set "
                             f"({format_cpulist(topo.allowed)})")
    return Binding(cpus, f"GPU {gpu}: threads bound to CPUs {format_cpulist(cpus)} (of its near CPUs "
                         f"{format_cpulist(topo.gpu_cpus[gpu] & topo.allowed)}; --no-cpu-bind turns this off)")


def apply(cpus: frozenset[int]) -> None:
    """Bind every thread of this process (Horovod's background thread already runs), and so the
    threads started later."""
    for task in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(task), cpus)
        except (ProcessLookupError, PermissionError):
            pass  # a thread that ended meanwhile


def cpus_per_rank(local_size: int, bound: bool) -> int:
    """The CPUs one rank can use: its own set when bound; else the process's set (cpusets and
    cgroups included, unlike os.cpu_count) shared by the node's ranks."""
    n = len(os.sched_getaffinity(0))
    return n if bound else max(1, n // max(1, local_size))
