"""dap_hvd: distributed ImageNet pre-training with data policies (DaP, InfoBatch, RS2, ...).

Layers (imports only point downwards):
  core      config (pydantic, lazily), policy/ (schedule, policies, scores), files (the one atomic
            write)  -- no torch / horovod
  data      data/ catalog, sharding, spec (the loader contract), loaders, dali (the only DALI
            import), torch_loader, sample_data, verify
  wrappers  dist (the only horovod import), metrics (the only prometheus_client import)
  engine    ledger, engine (train_one_epoch / evaluate), lr, models, checkpoint
  trainer   train (wires it all together), evaluate, export, supervise
  cli       cli, bench
"""

__version__ = "0.1.0"


class DapError(Exception):
    """An error a user can act on; the CLI prints it without a traceback."""


class ConfigError(DapError, ValueError):
    """A bad flag, config key or parameter; the message names it."""


class DataError(DapError):
    """A bad file, file list or dataset layout; the message names the file."""


class DivergedError(DapError):
    """Non-finite training losses: the run has diverged."""


def first_line(exc: BaseException) -> str:
    """What a one-line error shows of an exception: the first non-empty line of its message
    (DALI's and torch.load's run to many lines), or its type's name when it has none."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__
