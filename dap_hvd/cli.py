"""`dap-hvd`: plan | train | make-sample-data | verify-data | bench.

Imports stay lazy so `dap-hvd plan` answers in well under a second, without torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

from dap_hvd import ConfigError, DapError


def _schedule_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("DaP schedule (Algorithm 1)")
    g.add_argument("--preset", help="imagenet | cifar10 | sample (flags beside it override it)")
    g.add_argument("--epochs", type=int, help="E: total epochs")
    g.add_argument("--warmup", type=int, help="W: epochs on all data before the first drop")
    g.add_argument("--interval", type=int, help="I: epochs between drops")
    g.add_argument("--keep", type=float, help="p: fraction of the current subset kept at a drop")
    g.add_argument("--active", help="alpha: epochs of a cycle in which drops happen (none = unlimited)")
    g.add_argument("--reuse", help="R: comma list of epochs after which all data comes back")


def _schedule_overrides(a: argparse.Namespace) -> dict:
    return {k: getattr(a, k) for k in ("preset", "epochs", "warmup", "interval", "keep", "active", "reuse")}


def cmd_plan(a: argparse.Namespace) -> int:
    from dap_hvd.config import _schedule  # the same resolution `train` uses
    from dap_hvd.schedule import plan

    values = {k: v for k, v in _schedule_overrides(a).items() if v is not None}
    p = plan(_schedule(values, default_preset="imagenet"), num_samples=a.num_samples)
    if a.json:
        print(json.dumps(p.to_dict(), indent=1))
        return 0
    s = p.schedule
    print(f"E={s.epochs} W={s.warmup} I={s.interval} p={s.keep} alpha={s.active or 'unlimited'} "
          f"R={','.join(map(str, s.reuse)) or '-'}" + (f" N={p.num_samples}" if p.num_samples else ""))
    print(f"{'epoch':>5}  {'fraction':>8}  {'size':>10}  {'event':<7} after")
    for e in p.epochs:
        size = "-" if e.size is None else str(e.size)
        print(f"{e.epoch:>5}  {e.fraction:>8.4f}  {size:>10}  {e.event:<7} {e.after}")
    print(f"compute ratio: {p.compute_ratio:.4f} ({p.compute_ratio:.1%} of full-data training)")
    return 0


def _train_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="train under horovodrun / mpirun / SLURM, or as one process")
    p.add_argument("--config", help="YAML file (sections: schedule, data, optim; CLI flags override it)")
    _schedule_flags(p)
    B = argparse.BooleanOptionalAction
    p.add_argument("--strategy", help="dap | random | full")
    p.add_argument("--model", help="resnet18..152, densenet121/169, mobilenet_v2, mobilenet_v1, resnet_small")
    p.add_argument("--data", dest="root", help="ImageNet-layout root (default: the embedded sample dataset)")
    p.add_argument("--train-list", help="'path label' file list for training, paths relative to --data")
    p.add_argument("--val-list", help="'path label' file list for validation")
    p.add_argument("--out", help="run directory (default runs/dap)")
    p.add_argument("--seed", type=int)
    p.add_argument("--resume", help="RUN_DIR: continue from its last checkpoint (a larger --epochs extends it)")
    p.add_argument("--batch-size", type=int, help="per rank")
    p.add_argument("--lr", type=float, help="base LR (default 0.1 x global batch / 256)")
    p.add_argument("--loader", help="dali | torch")
    p.add_argument("--dali-device", help="auto | cpu | gpu")
    p.add_argument("--image-size", type=int)
    p.add_argument("--val-resize", type=int)
    p.add_argument("--workers", type=int)
    p.add_argument("--on-bad-sample", help="error (default) | skip")
    p.add_argument("--min-crop-area", type=float, help="RandomResizedCrop area floor (default 0.08; 0.25 on sample data)")
    p.add_argument("--color-jitter", type=float)
    p.add_argument("--pca-lighting", type=float)
    p.add_argument("--momentum", type=float)
    p.add_argument("--nesterov", action=B, default=None)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--no-bias-decay", action=B, default=None)
    p.add_argument("--label-smoothing", type=float)
    p.add_argument("--lr-schedule", help="step | cosine")
    p.add_argument("--lr-steps", help="comma list of epochs for x0.1 (default: --reuse)")
    p.add_argument("--lr-warmup-epochs", type=float)
    p.add_argument("--zero-gamma", action=B, default=None)
    p.add_argument("--fp16-allreduce", action=B, default=None)
    p.add_argument("--amp", help="auto | off | bf16 | fp16")
    p.add_argument("--channels-last", help="auto | on | off")
    p.add_argument("--sync-bn", action=B, default=None)
    p.add_argument("--eval-every", type=int)
    p.add_argument("--keep-checkpoints", type=int)
    p.add_argument("--merge", help="allreduce | allgather: how per-sample losses reach rank 0")
    p.add_argument("--metrics-port", help="base port; rank r serves on BASE + local_rank; 0 or off disables")
    p.add_argument("--metrics-host")
    p.add_argument("--metrics-linger", type=float, help="seconds to keep serving metrics after training ends")
    p.add_argument("--pushgateway", help="Pushgateway URL, pushed at each epoch end")
    p.add_argument("--run-id")
    p.add_argument("--progress", action=B, default=None)
    p.add_argument("--max-steps-per-epoch", type=int)
    p.add_argument("--stop-after", type=int, metavar="EPOCH",
                   help="end cleanly after this epoch, checkpointed (e.g. a SLURM time limit); --resume continues")
    p.add_argument("--mpi", action="store_true", help="hand mpi4py's COMM_WORLD to hvd.init (under mpirun)")
    return p


_NOT_CONFIG = {"cmd", "func", "config", "mpi"}


def cmd_train(a: argparse.Namespace) -> int:
    from dap_hvd.config import load_config

    overrides = {k: v for k, v in vars(a).items() if k not in _NOT_CONFIG}
    if overrides.get("metrics_port") is not None:
        mp = str(overrides["metrics_port"]).lower()
        if mp == "off":
            overrides["metrics_port"] = 0
        elif not mp.isdigit():
            raise ConfigError(f"--metrics-port: expected a port number, 0 or off, got {overrides['metrics_port']!r}")
    yaml_path = a.config
    if a.resume:
        if a.config:
            raise ConfigError("--config: cannot be combined with --resume (the run's own config.yaml is used)")
        yaml_path = str(Path(a.resume) / "config.yaml")
        if not Path(yaml_path).is_file():
            raise ConfigError(f"--resume: {a.resume} is not a run directory (no config.yaml)")
    cfg = load_config(yaml_path, overrides)
    comm = None
    if a.mpi:
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
    from dap_hvd.train import main as train_main

    return train_main(cfg, comm)


def cmd_make_sample_data(a: argparse.Namespace) -> int:
    from dap_hvd.sample_data import SampleSpec, make_sample_data

    spec = SampleSpec(num_classes=a.classes, train_per_class=a.train_per_class, val_per_class=a.val_per_class,
                      redundancy=a.redundancy, hard_fraction=a.hard_fraction, image_size=a.image_size, seed=a.seed)
    root = make_sample_data(a.dir, spec)
    print(f"wrote {root} ({spec.num_classes} classes, {spec.train_per_class} train / {spec.val_per_class} val "
          f"per class, redundancy {spec.redundancy}, hard {spec.hard_fraction:.0%})")
    return 0


def cmd_verify_data(a: argparse.Namespace) -> int:
    from dap_hvd.verify import verify_data

    if not Path(a.root).is_dir():
        raise ConfigError(f"verify-data: {a.root} is not a directory")
    report = verify_data(a.root, splits=tuple(a.splits.split(",")), file_list=a.file_list, workers=a.workers)
    print(report.render())
    return 0 if report.ok else 1


def cmd_sd_file(a: argparse.Namespace) -> int:
    from dap_hvd.discovery import parse_hosts, write_sd_file

    targets = write_sd_file(a.out, parse_hosts(a.hosts), a.base_port, a.run_id)
    print(f"wrote {len(targets)} scrape targets to {a.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dap-hvd", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("plan", help="print the per-epoch DaP plan and its compute ratio")
    _schedule_flags(p)
    p.add_argument("--num-samples", type=int, help="N: exact integer subset sizes")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plan)
    _train_parser(sub).set_defaults(func=cmd_train)
    p = sub.add_parser("make-sample-data", help="write the embedded sample dataset (ImageNet layout)")
    p.add_argument("dir")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--train-per-class", type=int, default=120)
    p.add_argument("--val-per-class", type=int, default=30)
    p.add_argument("--redundancy", type=int, default=4, help="near-duplicate copies of each distinct image")
    p.add_argument("--hard-fraction", type=float, default=0.15, help="share of genuinely hard images")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_make_sample_data)
    p = sub.add_parser("verify-data", help="list every unreadable / corrupt / non-image file; non-zero if any")
    p.add_argument("root")
    p.add_argument("--file-list")
    p.add_argument("--splits", default="train,val")
    p.add_argument("--workers", type=int, default=4)
    p.set_defaults(func=cmd_verify_data)
    p = sub.add_parser("sd-file", help="write a Prometheus file_sd targets file for a host list")
    p.add_argument("--hosts", required=True, help="host:slots,host:slots (horovodrun -H syntax)")
    p.add_argument("--base-port", type=int, default=9400)
    p.add_argument("--run-id", default="")
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_sd_file)
    sub.add_parser("bench", help="run the benchmark suite (writes BENCHMARKS.md); `dap-hvd bench -h` for its flags")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # the suite has its own parser (argparse REMAINDER drops leading flags)
        from dap_hvd.bench import main as bench_main

        return bench_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except DapError as e:
        print(f"dap-hvd {args.cmd}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
