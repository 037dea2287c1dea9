"""A light parent for each rank's trainer: a crash becomes the one-line error a bad file gets.

DALI's batched CPU decoder can crash the process (SIGSEGV) on some corrupt JPEGs, for example a
valid header followed by garbage, before it reports an error. Even when it reports one, the
process memory can already be damaged, so a later step (the scan that names the file, or a
destructor) can crash. Nothing in-process can catch that. So `dap-hvd train` and `dap-hvd
evaluate` run the real work in a child process. Before it builds each loader, the child leaves a
note of what it is about to read (crashnote.py). If the child dies by a signal, this parent
scans the files of that note with PIL and prints the error naming the file and the rank.

The parent imports neither torch nor Horovod, and forwards SIGINT/SIGTERM to the child. It
stays out of the way under `--mpi` (an MPI rank must be the process mpirun started) and when
DAP_HVD_SUPERVISE=0.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

import numpy as np

from dap_hvd import crashnote, notice

_WORKER = "DAP_HVD_WORKER"


def wanted(argv: list[str]) -> bool:
    return (os.environ.get(_WORKER) is None and os.environ.get("DAP_HVD_SUPERVISE", "1") != "0"
            and "--mpi" not in argv)


def _die_with_parent() -> None:
    """In the child, before exec: if this parent is killed outright (SIGKILL by a scheduler), the
    kernel sends the child SIGTERM, which it treats as an interruption, so no trainer is orphaned."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _rank() -> str:
    for var in ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID"):
        if os.environ.get(var):
            return os.environ[var]
    return "0"


def run(argv: list[str], command: str) -> int:
    """Run `dap-hvd ARGV` as a child; return its exit code, explaining a crash."""
    with tempfile.TemporaryDirectory(prefix="dap-hvd-") as tmp:
        note = os.path.join(tmp, "loader.npz")
        env = dict(os.environ, **{_WORKER: "1", crashnote.ENV: note})
        child = subprocess.Popen([sys.executable, "-m", "dap_hvd", *argv], env=env, preexec_fn=_die_with_parent)

        def forward(signum, _frame):
            if child.poll() is None:
                child.send_signal(signum)

        old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            rc = child.wait()
        finally:
            for s, h in old.items():
                signal.signal(s, h)
        if rc >= 0 or -rc in (signal.SIGINT, signal.SIGTERM):
            return rc if rc >= 0 else 128 - rc
        try:
            crash = _explain(-rc, note)
        except Exception as e:  # the explanation must not replace the one line with a traceback
            crash = Crash(f"the trainer crashed ({_signal_name(-rc)}); finding out why failed too "
                          f"({type(e).__name__}: {e})", False)
        if crash.bad_data:  # a bad file ends an elastic job, not this host's part in it (the survivors
            # of this round read it if it comes before they roll back; else those of the next)
            notice.announce_fatal(crash.message)
        print(f"dap-hvd {command}: error on rank {_rank()}: {crash.message}", file=sys.stderr, flush=True)
        return 2 if crash.bad_data else 128 - rc


@dataclass(frozen=True)
class Crash:
    message: str
    bad_data: bool  # a bad file explains it: exit like any other data error


def _signal_name(sig: int) -> str:
    return signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else f"signal {sig}"


def _explain(sig: int, note: str) -> Crash:
    name = _signal_name(sig)
    if sig == signal.SIGKILL:
        return Crash(f"the trainer was killed ({name}), most likely by the kernel's out-of-memory killer or the "
                     f"scheduler", False)
    if not os.path.exists(note):
        return Crash(f"the trainer crashed ({name}) before it read any data", False)
    from dap_hvd.data.catalog import load_catalog
    from dap_hvd.data.verify import describe_bad

    info = crashnote.read(note)
    cat = load_catalog(info.root, info.split, info.file_list)
    bad = describe_bad(cat.files(np.unique(info.indices)))
    if bad:
        return Crash(f"the data loader crashed ({name}): {bad}", True)
    return Crash(f"the trainer crashed ({name}) while reading the {info.split} split of {info.root}; every "
                 f"file of this rank's shard decodes with PIL, so this looks like a bug: please report it", False)
