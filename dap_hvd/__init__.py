"""dap_hvd: distributed ImageNet pre-training with the Drop-and-Pick (DaP) data policy.

Layers (imports only point downwards):
  core      config, schedule, selection, sharding, catalog  -- no torch / horovod import
  wrappers  dist (horovod), dali_loader (DALI), metrics (prometheus_client), torch_loader
  engine    ledger, engine (train_one_epoch / evaluate), checkpoint, models
  cli       cli, train (wires it all together)
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
