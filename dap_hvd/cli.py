"""`dap-hvd`: plan | train | evaluate | export | make-sample-data | make-fashion-mnist | verify-data | sd-file | bench
| compare.

Imports stay lazy so `dap-hvd plan` answers in well under a second, without torch.
"""

from __future__ import annotations

import argparse
import json
import os
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
    g.add_argument("--reuse", help="R: comma list of epochs after which all data comes back (none: never)")


def _policy_flags(p: argparse.ArgumentParser) -> None:
    from dap_hvd.policy.policies import POLICIES

    g = p.add_argument_group("data policy")
    g.add_argument("--strategy", help="; ".join(f"{k}: {v}" for k, v in POLICIES.items()) + " (default dap)")
    g.add_argument("--prune-ratio", type=float, help="infobatch r: below-mean samples are pruned with this "
                   "probability, the kept ones' losses scaled by 1/(1-r) (default 0.5); seta r: each epoch draws "
                   "a random 1-r of the data (default 0)")
    g.add_argument("--anneal", type=float, help="infobatch/seta delta: the first floor(delta x E) epochs prune, the "
                   "rest use all data (infobatch) or a random 1-r of it (seta) (default 0.875)")
    g.add_argument("--fraction", type=float, help="rs2 r: the share of the data each epoch trains (default 0.5)")
    g.add_argument("--groups", type=int, help="seta k: loss groups, by 1-D k-means (default 5)")
    g.add_argument("--window", type=float, help="seta w: a pruning epoch trains round(k x w) consecutive groups, "
                   "sliding from easy to hard (default 0.6)")


def _schedule_overrides(a: argparse.Namespace) -> dict:
    from dap_hvd.config import SCHEDULE_KEYS

    return {k: getattr(a, k) for k in SCHEDULE_KEYS}


def cmd_plan(a: argparse.Namespace) -> int:
    """The plan that `train` would follow. From flags alone it needs neither torch nor pydantic
    (argparse types the flags; the same resolution and range checks as `train` run on them);
    with --config the whole file is loaded and checked as `train` loads it, so both report the
    same problems."""
    from dap_hvd.policy.schedule import PRESETS, SCALING_RULE

    if a.list_presets:
        _print_presets()
        return 0
    policy, lr_steps, preset = _plan_from_config(a) if a.config else _plan_from_flags(a)
    p = policy.plan(a.num_samples)
    if a.json:
        d = p.to_dict()
        d.update(lr_steps=list(lr_steps), preset=dict(name=preset.name, epochs=PRESETS[preset.name]["epochs"],
                                                      scaled=preset.scaled, rule=SCALING_RULE))
        print(json.dumps(d, indent=1))
        return 0
    _print_plan(p, lr_steps, preset)
    return 0


def _print_presets() -> None:
    from dap_hvd.policy.schedule import PRESET_LR_STEPS, PRESETS

    for name, p in PRESETS.items():
        print(f"{name:<9} E={p['epochs']} W={p['warmup']} I={p['interval']} p={p['keep']} "
              f"alpha={p['active'] or 'unlimited'} R={','.join(map(str, p['reuse'])) or '-'} "
              f"LR x0.1 after {','.join(map(str, PRESET_LR_STEPS[name]))}")


def _print_plan(p, lr_steps: tuple, preset) -> None:
    """The plan as a table: its parameters, one row per epoch, the compute ratio."""
    from dap_hvd.policy.schedule import SCALING_RULE

    s = p.schedule
    if s is not None:  # dap and random: DaP's schedule
        what = (f"E={s.epochs} W={s.warmup} I={s.interval} p={s.keep} alpha={s.active or 'unlimited'} "
                f"R={','.join(map(str, s.reuse)) or '-'}")
    else:
        what = " ".join([f"E={p.num_epochs}"] + [f"{k}={v}" for k, v in p.params.items()])
    print(f"{p.policy}: {what}" + (f" N={p.num_samples}" if p.num_samples else "")
          + f"; LR x0.1 after {','.join(map(str, lr_steps)) or '-'}")
    if preset.scaled:
        print(f"from the {preset.describe() if s is not None else preset.describe(('lr_steps',))}\n"
              f"  (scaling: {SCALING_RULE}; flags given beside it win)")
    print(f"{'epoch':>5}  {'fraction':>15}  {'size':>17}  {'event':<7} after")
    for e in p.epochs:
        fraction = f"{e.fraction:.4f}" if e.exact else f"{e.low_fraction:.4f}..{e.fraction:.4f}"
        size = "-" if e.size is None else (str(e.size) if e.exact else f"{e.low_size}..{e.size}")
        print(f"{e.epoch:>5}  {fraction:>15}  {size:>17}  {e.event:<7} {e.action}")
    if p.exact:
        print(f"compute ratio: {p.compute_ratio:.4f} ({p.compute_ratio:.1%} of full-data training)")
    elif p.nominal_ratio is not None:
        low, high = p.compute_bounds
        print(f"compute ratio: nominal {p.nominal_ratio:.4f} (the window's groups of equal size), bounds "
              f"{low:.4f}..{high:.4f} (the k-means groups follow the losses; summary.json has the measured value)")
    else:
        low, high = p.compute_bounds
        print(f"compute ratio: {low:.4f}..{high:.4f} (depends on the losses; the lower bound is in expectation, "
              f"if all but one sample scored below the mean; summary.json has the measured value)")


def _plan_from_flags(a: argparse.Namespace):
    """(policy, LR decay epochs, scaled preset) from the plan flags, checked as `train` checks them."""
    from dap_hvd.config import POLICY_KEYS, check_policy_params, schedule_from
    from dap_hvd.policy.policies import POLICIES, make_policy
    from dap_hvd.policy.schedule import Schedule

    name = a.strategy or "dap"
    if name not in POLICIES:
        raise ConfigError(f"strategy (--strategy): unknown policy {name!r}; choose from {', '.join(POLICIES)}")
    problems: list[str] = []
    flags = {k: v for k, v in _schedule_overrides(a).items() if v is not None}
    resolved = schedule_from({}, flags, strategy=name, default_preset="imagenet", problems=problems)
    params = {k: getattr(a, k) for k in POLICY_KEYS if getattr(a, k) is not None}
    check_policy_params(name, [("schedule", k) for k in flags] + [("policy", k) for k in params], problems)
    policy = None
    try:  # the policy's own ranges, also when the schedule failed (over a stand-in of one epoch)
        policy = make_policy(name, resolved.schedule if resolved else Schedule(1, 0, 1, 1.0), **params)
    except ConfigError as e:
        problems.append(str(e))
    if problems:
        raise ConfigError("; ".join(dict.fromkeys(problems)))
    return policy, resolved.preset.lr_steps, resolved.preset


def _plan_from_config(a: argparse.Namespace):
    """(policy, LR decay epochs, scaled preset) of a training config, loaded as `train` loads it."""
    from dap_hvd.config import POLICY_KEYS, SCHEDULE_KEYS, load_config, read_yaml
    from dap_hvd.policy.schedule import scale_preset

    overrides = {k: getattr(a, k) for k in ("strategy", *SCHEDULE_KEYS, *POLICY_KEYS)}
    cfg = load_config(a.config, overrides)
    given = (read_yaml(a.config).get("schedule") or {}).get("preset")
    preset = a.preset or given or ("sample" if cfg.data.is_sample else "imagenet")
    return cfg.make_policy(), cfg.lr_steps, scale_preset(preset, cfg.schedule.epochs)


def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="train under horovodrun / mpirun / SLURM, or as one process")
    p.add_argument("--config", help="YAML file (sections: schedule, policy, data, optim; CLI flags override it)")
    _schedule_flags(p)
    _policy_flags(p)
    _run_flags(p)
    _data_flags(p)
    _recipe_flags(p)
    _observability_flags(p)
    p.set_defaults(func=cmd_train)


def _run_flags(p: argparse.ArgumentParser) -> None:
    B = argparse.BooleanOptionalAction
    g = p.add_argument_group("run")
    g.add_argument("--model", help="resnet18..152, densenet121/169, mobilenet_v2, mobilenet_v1, resnet_small "
                   "(default: resnet50; resnet_small on the sample data)")
    g.add_argument("--data", dest="root", help="ImageNet-layout root (default: the embedded sample dataset)")
    g.add_argument("--train-list", help="'path label' file list for training, paths relative to --data")
    g.add_argument("--val-list", help="'path label' file list for validation, paths relative to --data")
    g.add_argument("--out", help="run directory (default runs/dap); an earlier run there is moved aside")
    g.add_argument("--seed", type=int, help="seeds shards, augmentation, selection and each rank's RNG (default 0)")
    g.add_argument("--resume", metavar="RUN_DIR|auto",
                   help="continue RUN_DIR from its last checkpoint (a larger --epochs extends it); auto: "
                        "resume --out if it holds a run, else start fresh (what a scheduler's requeue wants)")
    g.add_argument("--stop-after", type=int, metavar="EPOCH",
                   help="end cleanly after this epoch, checkpointed (e.g. a SLURM time limit); --resume continues")
    g.add_argument("--eval-every", type=int, help="evaluate every N epochs, and always after the last (default 1)")
    g.add_argument("--keep-checkpoints", type=int, help="how many epoch checkpoints to keep (default 2)")
    g.add_argument("--merge", help="allreduce (dense, default) | allgather: how per-sample losses meet")
    g.add_argument("--max-steps-per-epoch", type=int, help="debugging: cap every epoch at N steps "
                   "(random or full strategies only)")
    g.add_argument("--progress", action=B, default=None, help="rank 0's progress line (default on)")
    g.add_argument("--mpi", action="store_true", help="hand mpi4py's COMM_WORLD to hvd.init (under mpirun)")
    g.add_argument("--elastic", action="store_true", default=None,
                   help="under horovodrun --min-np/--max-np with a host discovery script (launch/elastic.sh): "
                        "a lost host rolls the survivors back to the last epoch end, a new one joins at the next")


def _data_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--batch-size", type=int, help="per rank (default 64)")
    g.add_argument("--loader", help="dali (default) | torch (torchvision, for comparison)")
    g.add_argument("--dali-device", help="auto (gpu when CUDA is there) | cpu | gpu")
    g.add_argument("--image-size", type=int, help="training crop in px (default 224; 32 on the sample data)")
    g.add_argument("--val-resize", type=int, help="shorter side before the centre crop (default size x 256/224)")
    g.add_argument("--workers", type=int, help="decode threads (DALI) or worker processes (torch) per rank "
                   "(default: on GPU the node's cores per local rank, at most 8; on CPU 2)")
    g.add_argument("--hw-decoder-load", type=float, help="GPU: share of JPEGs sent to the hardware decoder "
                   "(default DALI's 0.65; try 0.9 on A100/H100)")
    g.add_argument("--on-bad-sample", help="error (default: stop, naming the file) | skip (exclude, and count)")
    g.add_argument("--min-crop-area", type=float,
                   help="RandomResizedCrop area floor (default 0.08; 0.25 on sample data)")
    g.add_argument("--color-jitter", type=float, help="brightness/contrast/saturation strength in [0, 1] (default 0)")
    g.add_argument("--pca-lighting", type=float, help="AlexNet PCA lighting noise std (Bag of Tricks: 0.1; default 0)")


def _recipe_flags(p: argparse.ArgumentParser) -> None:
    B = argparse.BooleanOptionalAction
    g = p.add_argument_group("optimizer and recipe")
    g.add_argument("--lr", type=float, help="base LR (default 0.1 x global batch / 256; 0.8 x on the sample data)")
    g.add_argument("--momentum", type=float, help="SGD momentum (default 0.9)")
    g.add_argument("--nesterov", action=B, default=None, help="Nesterov momentum (default off)")
    g.add_argument("--weight-decay", type=float, help="default 1e-4")
    g.add_argument("--no-bias-decay", action=B, default=None, help="no weight decay on biases and BN (default on)")
    g.add_argument("--label-smoothing", type=float,
                   help="for the gradient only; selection ranks by plain CE (default 0.1)")
    g.add_argument("--lr-schedule", help="step (x0.1 after each --lr-steps epoch, default) | cosine")
    g.add_argument("--lr-steps", help="comma list of epochs after which the LR is x0.1 (default: the preset's; "
                   "imagenet 30,60,90, cifar10 150,225, sample 8; none: no decay)")
    g.add_argument("--lr-warmup-epochs", type=float,
                   help="gradual LR warm-up, in full epochs (default 5; 1 on sample data)")
    g.add_argument("--zero-gamma", action=B, default=None,
                   help="last BN of each residual block starts at 0 (default on)")
    g.add_argument("--fp16-allreduce", action=B, default=None, help="compress gradients to fp16 in Horovod's allreduce")
    g.add_argument("--amp", help="auto (bf16 on GPU, off on CPU) | off | bf16 | fp16 (with a GradScaler)")
    g.add_argument("--channels-last", help="auto (on GPU) | on | off: NHWC input batches")
    g.add_argument("--sync-bn", action=B, default=None, help="Horovod SyncBatchNorm (GPU only)")
    g.add_argument("--compile", action=B, default=None, help="torch.compile the model for the full training "
                   "batches (default off; a minute or more of compiling at start, then faster steps: BENCHMARKS.md)")
    g.add_argument("--cpu-bind", action=B, default=None, help="on GPU nodes, bind each rank's threads to CPU "
                   "cores near its GPU, split among the GPUs sharing them (default on)")


def _observability_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("observability")
    g.add_argument("--metrics-port", help="Prometheus base port; rank r serves on BASE + local_rank; 0 or off disables")
    g.add_argument("--metrics-host", help="interface the metrics server binds (default 0.0.0.0)")
    g.add_argument("--metrics-linger", type=float, help="after training, serve metrics until the next scrape, at "
                   "most this many seconds (default 30: two 15 s scrape intervals; no wait if never scraped)")
    g.add_argument("--pushgateway", help="Pushgateway URL, pushed at each epoch end")
    g.add_argument("--run-id", help="label on every metric series (default: the run folder's name and start time)")

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
    yaml_path, notes = a.config, []
    if a.resume == "auto":  # a scheduler's requeue: continue the run in --out if there is one
        from dap_hvd.checkpoint import list_checkpoints
        from dap_hvd.config import TrainConfig

        out = Path(a.out or TrainConfig.out)
        a.resume = str(out) if (out / "config.yaml").is_file() and list_checkpoints(out) else None
        overrides["resume"] = a.resume
        if a.resume:  # the run's own config.yaml (and the flags given) apply, as with --resume RUN_DIR
            overrides["out"], a.config = None, None
        else:
            notes.append(f"--resume auto: {out} holds no run to continue (no config.yaml with checkpoints); "
                         f"starting a fresh run")
    record = None
    if a.resume:
        if a.config:
            raise ConfigError("--config: cannot be combined with --resume (the run's own config.yaml is used)")
        yaml_path = str(Path(a.resume) / "config.yaml")
        if a.config is None and a.out and Path(a.out) != Path(a.resume):
            raise ConfigError(f"--out: a resumed run stays in {a.resume}; drop --out {a.out}")
        if not Path(yaml_path).is_file():
            raise ConfigError(f"--resume: {a.resume} is not a run directory (no config.yaml)")
        from dap_hvd.config import read_yaml

        record = read_yaml(yaml_path)
        # The LR comes from the checkpoint (carried to the new global batch), unless --lr is given now.
        (record.get("optim") or {}).pop("lr", None)
    cfg = load_config(yaml_path if record is None else None, overrides, raw=record, notes=notes)
    from dap_hvd.train import main as train_main

    return train_main(cfg, _mpi_comm(a), notes=tuple(notes))


def _mpi_comm(a: argparse.Namespace):
    """mpi4py's COMM_WORLD for hvd.init under --mpi (mpirun, srun --mpi=pmix); None otherwise."""
    if not a.mpi:
        return None
    from mpi4py import MPI

    return MPI.COMM_WORLD


def cmd_evaluate(a: argparse.Namespace) -> int:
    from dap_hvd.evaluate import cli_overrides
    from dap_hvd.evaluate import main as evaluate_main

    return evaluate_main(a.target, cli_overrides(a.root, a.batch_size, a.loader, a.workers), a.json, _mpi_comm(a))


def cmd_export(a: argparse.Namespace) -> int:
    from dap_hvd.export import export

    info = export(a.target, a.out, force=a.force)
    print(f"wrote {a.out} ({info['model']}, {info['num_classes']} classes, epoch {info['epoch']}"
          + (f", top1 {info['top1']:.4f}" if info["top1"] is not None else "") + f"); load it with {info['load']}")
    return 0


def cmd_make_sample_data(a: argparse.Namespace) -> int:
    from dap_hvd.data.sample_data import SampleSpec, make_sample_data

    spec = SampleSpec(num_classes=a.classes, train_per_class=a.train_per_class, val_per_class=a.val_per_class,
                      redundancy=a.redundancy, hard_fraction=a.hard_fraction, image_size=a.image_size, seed=a.seed)
    root = make_sample_data(a.dir, spec, force=a.force)
    print(f"wrote {root} ({spec.num_classes} classes, {spec.train_per_class} train / {spec.val_per_class} val "
          f"per class, redundancy {spec.redundancy}, hard {spec.hard_fraction:.0%})")
    return 0


def cmd_make_fashion_mnist(a: argparse.Namespace) -> int:

    from dap_hvd.data.fashion_mnist import DEBIAN_DIR, FashionSpec, write_fashion_mnist

    spec = FashionSpec(train_per_class=a.train_per_class, val_per_class=a.val_per_class, seed=a.seed)
    source = Path(a.source) if a.source else DEBIAN_DIR
    root = write_fashion_mnist(Path(a.dir), spec, source=source, force=a.force)
    print(f"wrote {root} (Fashion-MNIST, {a.train_per_class or 6000} train / {a.val_per_class or 1000} val per class, "
          f"28x28 PNG, from {source})")
    return 0


def cmd_verify_data(a: argparse.Namespace) -> int:
    from dap_hvd.data.verify import verify_data

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
    from dap_hvd import __version__

    parser = argparse.ArgumentParser(prog="dap-hvd", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"dap-hvd {__version__}")
    sub = parser.add_subparsers(dest="cmd", required=True)
    _plan_parser(sub)
    _train_parser(sub)
    _evaluate_parser(sub)
    _export_parser(sub)
    _make_sample_data_parser(sub)
    _make_fashion_mnist_parser(sub)
    _verify_data_parser(sub)
    _sd_file_parser(sub)
    sub.add_parser("bench", help="run the benchmark suite (writes BENCHMARKS.md); `dap-hvd bench -h` for its flags")
    sub.add_parser("compare", help="every data policy at the same compute budget on your data, over seeds "
                   "(a report: table, JSON, Pareto plot); `dap-hvd compare -h` for its flags")
    return parser


def _plan_parser(sub) -> None:
    p = sub.add_parser("plan", help="print the per-epoch plan of a data policy and its compute ratio")
    _schedule_flags(p)
    _policy_flags(p)
    p.add_argument("--num-samples", type=int, help="N: exact integer subset sizes")
    p.add_argument("--config",
                   help="read the strategy, schedule and policy of a training YAML config (flags override them)")
    p.add_argument("--list-presets", action="store_true", help="list the presets and their LR decay epochs")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=cmd_plan)


def _evaluate_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="top-1/top-5 of a run's last checkpoint (or a checkpoint file), "
                       "as one process or under horovodrun/mpirun")
    p.add_argument("target", metavar="RUN_DIR|CHECKPOINT", help="a run folder (its newest checkpoint) or a .pt file")
    p.add_argument("--data", dest="root", help="dataset root (default: the one the run trained on)")
    p.add_argument("--batch-size", type=int, help="per rank (default: the run's)")
    p.add_argument("--loader", help="dali | torch (default: the run's)")
    p.add_argument("--workers", type=int, help="decode threads / worker processes per rank (default: the run's)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--mpi", action="store_true", help="hand mpi4py's COMM_WORLD to hvd.init (under mpirun)")
    p.set_defaults(func=cmd_evaluate)


def _export_parser(sub) -> None:
    p = sub.add_parser("export", help="write a run's model weights alone (safetensors or a state_dict)")
    p.add_argument("target", metavar="RUN_DIR|CHECKPOINT", help="a run folder (its newest checkpoint) or a .pt file")
    p.add_argument("--out", required=True, help="FILE: .safetensors for safetensors, anything else for a "
                   "torch state_dict; FILE.json beside it describes the model")
    p.add_argument("--force", action="store_true", help="overwrite FILE and FILE.json if they exist")
    p.set_defaults(func=cmd_export)


def _make_sample_data_parser(sub) -> None:
    p = sub.add_parser("make-sample-data", help="write the embedded sample dataset (ImageNet layout)")
    p.add_argument("dir", help="where to write DIR/{train,val}/<class>/*.jpg")
    p.add_argument("--classes", type=int, default=10, help="number of classes (default 10)")
    p.add_argument("--train-per-class", type=int, default=120, help="training images per class (default 120)")
    p.add_argument("--val-per-class", type=int, default=30, help="validation images per class (default 30)")
    p.add_argument("--redundancy", type=int, default=4, help="near-duplicate copies of each distinct image")
    p.add_argument("--hard-fraction", type=float, default=0.15, help="share of genuinely hard images")
    p.add_argument("--image-size", type=int, default=64, help="side of the square JPEGs in px (default 64)")
    p.add_argument("--seed", type=int, default=0, help="same seed, same bytes (default 0)")
    p.add_argument("--force", action="store_true",
                   help="replace DIR even if it holds something make-sample-data did not write")
    p.set_defaults(func=cmd_make_sample_data)


def _make_fashion_mnist_parser(sub) -> None:
    p = sub.add_parser("make-fashion-mnist", help="write Fashion-MNIST (real images) in the ImageNet layout")
    p.add_argument("dir", help="where to write DIR/{train,val}/<class name>/<index>.png")
    p.add_argument("--source", help="folder with the IDX files (default: where `apt-get install "
                   "dataset-fashion-mnist` puts them, /usr/share/datasets/fashion-mnist)")
    p.add_argument("--train-per-class", type=int, help="a class-balanced training subset (default: all 6,000)")
    p.add_argument("--val-per-class", type=int, help="a class-balanced test subset (default: all 1,000)")
    p.add_argument("--seed", type=int, default=0, help="which samples a subset takes (default 0)")
    p.add_argument("--force", action="store_true",
                   help="replace DIR even if it holds what make-fashion-mnist did not write (or this very dataset)")
    p.set_defaults(func=cmd_make_fashion_mnist)


def _verify_data_parser(sub) -> None:
    p = sub.add_parser("verify-data", help="list every unreadable / corrupt / non-image file; non-zero if any")
    p.add_argument("root", help="dataset root in the ImageNet layout")
    p.add_argument("--file-list", help="check a 'path label' file list (paths relative to ROOT) instead of folders")
    p.add_argument("--splits", default="train,val", help="comma list of split folders to check (default train,val)")
    p.add_argument("--workers", type=int, default=4, help="decode threads (default 4)")
    p.set_defaults(func=cmd_verify_data)


def _sd_file_parser(sub) -> None:
    p = sub.add_parser("sd-file", help="write a Prometheus file_sd targets file for a host list")
    p.add_argument("--hosts", required=True, help="host:slots,host:slots (horovodrun -H syntax)")
    p.add_argument("--base-port", type=int, required=True, help="rank r of a host serves on BASE + local rank")
    p.add_argument("--run-id", default="", help="run_id label on the targets")
    p.add_argument("--out", required=True, help="targets file to write (JSON, Prometheus file_sd)")
    p.set_defaults(func=cmd_sd_file)


def main(argv: Optional[list[str]] = None) -> int:
    console = argv is None  # the dap-hvd program itself, not a caller in the same process
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # the suite has its own parser (argparse REMAINDER drops leading flags)
        from dap_hvd.bench import main as bench_main

        return bench_main(argv[1:])
    if argv[:1] == ["compare"]:  # its own parser too: the train flags for every run follow `--`
        from dap_hvd.compare import main as compare_main

        return compare_main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.cmd in ("train", "evaluate"):
        from dap_hvd import supervise

        if supervise.wanted(argv):  # the work runs in a child, so a crash in DALI is explained
            return supervise.run(argv, args.cmd)
    try:
        rc = args.func(args)
    except DapError as e:
        print(f"dap-hvd {args.cmd}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `dap-hvd plan | head`: the reader closed the pipe, having what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    if console and args.cmd in ("train", "evaluate"):
        _fast_exit(rc)
    return rc


def _fast_exit(rc: int) -> None:
    """Everything is written and closed by now; unloading torch, DALI and Horovod at interpreter
    exit only costs time (over a second per rank), so leave without it."""
    import logging

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    mpi = sys.modules.get("mpi4py.MPI")
    if mpi is not None and mpi.Is_initialized() and not mpi.Is_finalized():
        mpi.Finalize()  # mpirun counts a rank that leaves without it as an abnormal exit
    os._exit(rc)
