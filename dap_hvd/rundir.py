"""The run folder (`--out`, `--resume`): what counts as a run, one job at a time, and an earlier
run moved aside.

- One job per folder: rank 0 holds an exclusive `fcntl.flock` on RUN_DIR/.lock for the job's
  whole life (the kernel drops it when the process ends, however it ends). A second job with the
  same folder (a duplicated sbatch, a requeue while the old allocation tears down) is refused
  with one line naming the holder, instead of renaming the live folder under it.
- A fresh run writes only into an empty folder, a folder holding nothing but what a run writes,
  or a run (config.yaml plus checkpoints/epoch-*.pt), which is moved aside first. Anything else
  (the user's notes, a dataset, a home folder with a stray `checkpoints/`) is refused, and so is
  an `--out` that is, holds or lies inside `--data`.
- A symlinked run folder keeps its link: the earlier run's entries move into a new folder beside
  the link's target, on the target's file system, and the lock file stays where it is.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from dap_hvd import DapError
from dap_hvd.checkpoint import list_checkpoints, remove_stale_temps
from dap_hvd.files import write_atomic

LOCK_NAME = ".lock"
# What `dap-hvd train` writes into a run folder; a folder holding only these is the trainer's own.
RUN_ENTRIES = frozenset({"config.yaml", "train.log", "summary.json", "checkpoints", LOCK_NAME})
_SHOWN = 3  # foreign entries named in a refusal

log = logging.getLogger("dap_hvd")


@dataclass(frozen=True)
class Checkpointed:
    """The newest checkpoint on disk: what a resume would continue from."""

    epoch: int
    path: Path


def newest_checkpoint(run_dir: Path) -> Optional[Checkpointed]:
    """From the files themselves, not from what a process believed when it was stopped: the one
    source that is right after any kind of exit (Ctrl-C, SIGTERM, a peer's SIGKILL)."""
    ckpts = list_checkpoints(Path(run_dir))
    if not ckpts:
        return None
    return Checkpointed(int(ckpts[-1].stem.split("-")[1]), ckpts[-1])


def is_run(path: Path) -> bool:
    """A dap-hvd run: config.yaml and at least one epoch checkpoint."""
    return (Path(path) / "config.yaml").is_file() and bool(list_checkpoints(Path(path)))


@dataclass
class RunLock:
    """The flock on RUN_DIR/.lock; `fd` is None where the file system has no locks."""

    path: Path
    fd: Optional[int]

    def release(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"host {info['host']}, pid {info['pid']}, started {info['started']}"
    except (OSError, ValueError, KeyError, UnicodeDecodeError):
        return "holder unknown"


def lock(run_dir: Path, flag: str) -> RunLock:
    """An exclusive, non-blocking lock on the folder, or a DapError naming the job that holds it."""
    path = Path(run_dir) / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise DapError(f"{flag}: {run_dir} is in use by another job ({holder}); wait for it to end, or choose "
                       f"another folder") from None
    except OSError as e:
        os.close(fd)
        if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
            raise
        log.warning("%s: the file system of %s has no locks (%s); make sure no other job uses this folder",
                    flag, run_dir, e.strerror or e)
        return RunLock(path, None)
    info = dict(host=socket.gethostname(), pid=os.getpid(), started=time.strftime("%Y-%m-%d %H:%M:%S %Z"))
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    return RunLock(path, fd)


def _overlap(out: Path, data: Path) -> Optional[str]:
    out, data = out.resolve(), data.resolve()
    if out == data:
        return "is the --data folder"
    if out.is_relative_to(data):
        return f"lies inside the --data folder {data}"
    if data.is_relative_to(out):
        return f"holds the --data folder {data}"
    return None


def _foreign(run_dir: Path) -> list[str]:
    """What in the folder a fresh run may not write into or move: none of it when it is a run
    (it moves aside whole), else everything that is not one of the trainer's own files, and any
    checkpoint without the config.yaml that says what it is."""
    if is_run(run_dir):
        return []
    names = sorted(e.name for e in os.scandir(run_dir))
    foreign = [n for n in names if n not in RUN_ENTRIES]
    if not foreign and list_checkpoints(run_dir):
        foreign = ["checkpoints/ (without config.yaml)"]
    return foreign


def claim(run_dir: Path, flag: str, data_root: Optional[Path] = None, fresh: bool = True) -> RunLock:
    """Rank 0, before anything is written: check the folder, create it, and lock it for this job.
    `fresh`: a new run (not --resume, not an elastic restart), whose folder must be empty, the
    trainer's own, or a run; `data_root` must not overlap it."""
    run_dir = Path(run_dir)
    if run_dir.is_symlink() and not run_dir.exists():
        raise DapError(f"{flag}: {run_dir} is a symlink to {os.readlink(run_dir)}, which does not exist")
    if run_dir.exists() and not run_dir.is_dir():
        raise DapError(f"{flag}: {run_dir} is a file, not a folder")
    if fresh and data_root is not None:
        overlap = _overlap(run_dir, Path(data_root))
        if overlap:
            raise DapError(f"{flag}: {run_dir} {overlap}; a run folder must be outside the dataset (a later "
                           f"run moves an earlier one aside)")
    try:
        if fresh and run_dir.is_dir():
            foreign = _foreign(run_dir)
            if foreign:
                shown = ", ".join(foreign[:_SHOWN]) + (f" and {len(foreign) - _SHOWN} more" if len(foreign) > _SHOWN
                                                       else "")
                raise DapError(f"{flag}: {run_dir} holds {shown}, and is not a dap-hvd run (config.yaml and "
                               f"checkpoints/); choose an empty or new folder")
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=run_dir):
            pass
        return lock(run_dir, flag)
    except OSError as e:
        raise DapError(f"{flag}: cannot write to {run_dir}: {e.strerror or e}") from None


def archive(run_dir: Path) -> Optional[Path]:
    """A fresh run never mixes with an old one (a stale epoch-0012.pt would be what --resume picks
    up later): an earlier run's entries move into RUN_DIR.<time> beside the folder's real
    location. The folder itself stays (a symlink stays a symlink), and so does the lock file."""
    real = Path(run_dir).resolve()
    if not is_run(real):
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest, n = real.with_name(f"{real.name}.{stamp}"), 1
    while dest.exists():
        dest, n = real.with_name(f"{real.name}.{stamp}-{n}"), n + 1
    dest.mkdir()
    for entry in sorted(os.scandir(real), key=lambda e: e.name):
        if entry.name != LOCK_NAME:
            os.replace(entry.path, dest / entry.name)
    return dest


# ---------------------------------------------------------------------------- the job's files and logs

class Interrupted(KeyboardInterrupt):
    """Ctrl-C or a scheduler's SIGTERM, with the newest checkpoint on disk (the one --resume
    continues), not the epoch that was running or being saved."""

    def __init__(self, epoch: int, checkpoint: Optional[Path] = None):
        super().__init__(epoch)
        self.epoch, self.checkpoint = epoch, checkpoint


@dataclass
class RunLog:
    """Where fatal errors go besides stderr: the run's train.log, once this run owns the folder."""

    rank: int
    path: Optional[Path] = None
    lock: Optional[RunLock] = None  # rank 0: the run folder's, for the job's whole life

    def fatal(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)
        if self.path is None:
            return
        line = f"{time.strftime('%H:%M:%S')} [rank {self.rank}] ERROR {message}\n"
        try:  # one append per line: ranks may share the file
            with open(self.path, "a") as f:
                f.write(line)
        except OSError:
            pass


_FORMAT = "%(asctime)s [rank %(rank)s] %(levelname)s %(message)s"


def setup_logging(rank: int) -> None:
    """The "dap_hvd" logger: every line names its rank. Rank 0 tells the story; the other ranks
    speak only for warnings."""
    logger = logging.getLogger("dap_hvd")
    logger.handlers.clear()
    logger.filters.clear()
    logger.setLevel(logging.INFO)
    logger.propagate = False

    def add_rank(record: logging.LogRecord) -> bool:
        record.rank = rank
        return True

    logger.addFilter(add_rank)
    out = logging.StreamHandler(sys.stdout)
    out.setFormatter(logging.Formatter(_FORMAT, "%H:%M:%S"))
    out.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    logger.addHandler(out)


def log_to_file(run_dir: Path) -> None:
    """Rank 0, once the run owns its folder: the log also goes to RUN_DIR/train.log."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fh = logging.FileHandler(run_dir / "train.log")
    fh.setFormatter(logging.Formatter(_FORMAT, "%H:%M:%S"))
    logging.getLogger("dap_hvd").addHandler(fh)


def write_config(run_dir: Path, resolved: dict) -> None:
    """RUN_DIR/config.yaml: the resolved config (TrainConfig.resolved), so the file says what ran
    and `--resume RUN_DIR` or `dap-hvd evaluate RUN_DIR` read it back as it was."""
    import yaml

    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(run_dir / "config.yaml", yaml.safe_dump(dict(resolved, out=str(run_dir)), sort_keys=False).encode())


def write_json(path: Path, obj) -> None:
    """summary.json and the caches: replaced whole, never seen half-written."""
    write_atomic(path, json.dumps(obj, indent=1).encode())


def take(run_dir: Path, fresh: bool) -> None:
    """Rank 0, once start-up worked: an earlier run moves aside, the log goes to the folder too."""
    moved = archive(run_dir) if fresh else None
    log_to_file(run_dir)
    if moved:
        log.warning("%s held an earlier run; moved it to %s (use --resume to continue a run)", run_dir, moved)
    stale = remove_stale_temps(run_dir)
    if stale:
        log.warning("removed %d temporary file(s) a killed checkpoint save left in %s", len(stale),
                    run_dir / "checkpoints")


def interrupted(run_dir: Path) -> str:
    """Rank 0's line for an interrupted run. From the files, not from the exception: a peer's
    SIGKILL can bring a second SIGTERM (the launcher's, the supervisor's) that lands outside the
    loop's handler."""
    done = newest_checkpoint(run_dir)
    if not done:
        return "interrupted before the first epoch ended; nothing was checkpointed"
    return (f"interrupted after epoch {done.epoch} (newest checkpoint: {done.path}); "
            f"resume with: dap-hvd train --resume {run_dir}")


def resume_hint(run_dir: Path, is_root: bool) -> str:
    """Where a failed job can continue from. Rank 0 writes the checkpoints, so it alone can say
    which is the newest (or that none is)."""
    if not is_root:
        return f"the last checkpoint is in {run_dir}, continue with --resume {run_dir}"
    done = newest_checkpoint(run_dir)
    return (f"the newest checkpoint is epoch {done.epoch}; continue with --resume {run_dir}" if done
            else "nothing was checkpointed")
