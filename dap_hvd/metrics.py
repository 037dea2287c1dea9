"""The one module that imports prometheus_client. Each rank serves its own registry (never the
process-global default one) on metrics_port + local_rank; every series carries rank and run_id.

Training never dies for a metrics port: a port that is taken is one warning, and the rank serves
on a free port instead (`Metrics.port`; the trainer writes it into the launcher's targets file).
Throughput and sample counts are live: the step loop hands over its host-side counts, published
every LIVE_INTERVAL seconds, with no device sync. After training, `linger` keeps serving until a
scraper has read the final values (at most `seconds`)."""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Callable, Optional

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, push_to_gateway, start_http_server

log = logging.getLogger("dap_hvd")

LIVE_INTERVAL = 2.0  # seconds between live updates of the sample counter and throughput gauge

_STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_WAIT_BUCKETS = (0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


class Metrics:
    def __init__(self, *, rank: int, local_rank: int, run_id: str, port: int = 0, host: str = "0.0.0.0",
                 pushgateway: Optional[str] = None, strategy: str = "dap",
                 clock: Callable[[], float] = time.monotonic):
        self.registry = CollectorRegistry(auto_describe=True)
        self.rank, self.run_id, self.pushgateway = rank, run_id, pushgateway
        self.port = port + local_rank if port else 0
        self._clock = clock
        self._live = _LiveCounts(clock())
        self._scrapes = _ScrapeWatch()
        self.registry.register(self._scrapes)
        labels = ("rank", "run_id")
        lv = (str(rank), run_id)
        r = self.registry

        def counter(name, doc):
            return Counter(name, doc, labels, registry=r).labels(*lv)

        def gauge(name, doc):
            return Gauge(name, doc, labels, registry=r).labels(*lv)

        def hist(name, doc, buckets):
            return Histogram(name, doc, labels, registry=r, buckets=buckets).labels(*lv)

        self.samples = counter("dap_samples_trained_total", "Samples trained by this rank (padding included).")
        self.images_per_second = gauge("dap_images_per_second", "Training throughput of this rank: over the last "
                                       f"{LIVE_INTERVAL:g} s or more during an epoch, over the epoch at its end.")
        self.step_seconds = hist("dap_step_seconds", "Time of one training step, data wait excluded.", _STEP_BUCKETS)
        self.data_wait = hist("dap_data_wait_seconds", "Time a step waited for its batch.", _WAIT_BUCKETS)
        self.loss = gauge("dap_train_loss", "Mean training loss of the last epoch (all ranks).")
        self.lr = gauge("dap_learning_rate", "Learning rate at the end of the last epoch.")
        self.epoch = gauge("dap_epoch", "Last completed epoch.")
        self.subset_size = gauge("dap_subset_samples", "Samples in the subset trained in the last epoch.")
        self.kept_fraction = gauge("dap_kept_fraction_ratio", "Subset size over the full dataset.")
        self.compute_ratio = gauge("dap_compute_ratio", "Cumulative samples trained over full-data epochs so far.")
        self.selection_seconds = hist("dap_selection_duration_seconds", "Merge + select + broadcast time.",
                                      (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.selection_bytes = counter("dap_selection_sent_bytes_total", "Bytes this rank sent for selection steps.")
        self.top1 = gauge("dap_top1_accuracy_ratio", "Validation top-1 accuracy, 0..1.")
        self.top5 = gauge("dap_top5_accuracy_ratio", "Validation top-5 accuracy, 0..1.")
        self.checkpoint_seconds = hist("dap_checkpoint_duration_seconds", "Time to write a checkpoint.",
                                       (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60))
        self.skipped = counter("dap_skipped_samples_total", "Bad samples excluded from training.")
        Gauge("dap_policy_info", "The run's data policy (value 1), by its name in the strategy label.",
              (*labels, "strategy"), registry=r).labels(*lv, strategy).set(1)
        self.weighted = gauge("dap_weighted_samples", "Samples of the last epoch whose loss weight was not 1 "
                              "(InfoBatch's rescaled samples).")
        self.scored = gauge("dap_scored_samples", "Samples with a score in the per-sample score table.")
        # ---- divergence accounting (issue #23, helper c23c): a separate block for an easy merge
        self.amp_skipped_steps = counter("dap_amp_skipped_steps_total",
                                         "Optimizer steps the fp16 GradScaler skipped (inf/NaN gradients).")
        # ----
        self._server = None
        if self.port:
            try:
                self._server, _ = start_http_server(self.port, addr=host, registry=self.registry)
            except OSError as e:
                self._fall_back(host, e)

    def _fall_back(self, host: str, error: OSError) -> None:
        taken = self.port
        try:
            self._server, _ = start_http_server(0, addr=host, registry=self.registry)
        except OSError as e:
            self.port = 0
            log.warning("rank %d: cannot serve metrics on %s:%d (%s), nor on any port (%s); training goes on "
                        "without its metrics endpoint", self.rank, host, taken, error.strerror or error,
                        e.strerror or e)
            return
        self.port = self._server.server_port
        log.warning("rank %d: metrics port %s:%d is taken (%s); serving on %d instead (the targets file says "
                    "so; METRICS_PORT / --metrics-port choose the base port)", self.rank, host, taken,
                    error.strerror or error, self.port)

    def observe_step(self, *, step_seconds: float, wait_seconds: float, samples: int = 0) -> None:
        self.step_seconds.observe(step_seconds)
        self.data_wait.observe(wait_seconds)
        live = self._live
        live.pending += samples
        now = self._clock()
        if now - live.since >= LIVE_INTERVAL:
            self.samples.inc(live.pending)
            self.images_per_second.set(live.pending / (now - live.since))
            live.published += live.pending
            live.pending, live.since = 0, now

    def epoch_done(self, *, samples: int, seconds: float) -> None:
        """The epoch's exact totals: the counter gets what the live updates have not yet counted."""
        self.samples.inc(samples - self._live.published)
        self.images_per_second.set(samples / max(seconds, 1e-9))
        self._live = _LiveCounts(self._clock())

    def publish_epoch(self, record: dict, *, rank_samples: int, rank_seconds: float, num_samples: int,
                      compute_ratio: float, scored: int, selected: bool, selection_bytes: int) -> None:
        """An epoch's end: this rank's live counts made exact, then the epoch's record (the same
        on every rank). `selected`: the epoch merged scores or dropped, so its selection time and
        bytes are worth a histogram sample."""
        self.epoch_done(samples=rank_samples, seconds=rank_seconds)
        self.loss.set(record["train_loss"])
        self.lr.set(record["lr"])
        self.epoch.set(record["epoch"])
        self.subset_size.set(record["subset"])
        self.kept_fraction.set(record["subset"] / num_samples)
        self.compute_ratio.set(compute_ratio)
        self.weighted.set(record["weighted"])
        self.amp_skipped_steps.inc(record["skipped_steps"])
        self.scored.set(scored)
        if selected:
            self.selection_seconds.observe(record["selection_seconds"])
            self.selection_bytes.inc(selection_bytes)
        if record["top1"] is not None:
            self.top1.set(record["top1"])
            self.top5.set(record["top5"])

    def linger(self, seconds: float) -> None:
        """Keep serving after training until a scrape has read the final values, at most `seconds`.
        Nobody scraped during the run (no Prometheus watches it): no wait."""
        if self._server is None or seconds <= 0 or not self._scrapes.count:
            return
        log.info("rank %d: metrics stay up until the next scrape, at most %g s (--metrics-linger)", self.rank, seconds)
        self._scrapes.wait_next(seconds)

    def push(self) -> None:
        if not self.pushgateway:
            return
        try:
            push_to_gateway(self.pushgateway, job="dap_hvd", registry=self.registry,
                            grouping_key={"rank": str(self.rank), "run_id": self.run_id})
        except Exception as e:  # a monitoring hiccup must not kill a training job
            log.warning("rank %d: push to %s failed: %s", self.rank, self.pushgateway, e)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def start(cfg, world, run_id: str, skipped: int) -> Metrics:
    """This rank's metrics for a training run (`skipped`: bad samples excluded). The ports the
    ranks serve them on (a taken one falls back to a free one) go into the launcher's targets file
    (DAP_HVD_SD_FILE), so Prometheus scrapes the right ones."""
    import torch

    from dap_hvd import dist
    from dap_hvd.discovery import record_ports

    metrics = Metrics(rank=world.rank, local_rank=world.local_rank, run_id=run_id, port=cfg.metrics_port,
                      host=cfg.metrics_host, pushgateway=cfg.pushgateway, strategy=cfg.strategy)
    metrics.skipped.inc(skipped)
    if cfg.metrics_port:
        ports = dist.allgather(torch.tensor([metrics.port], dtype=torch.int64), name="metrics.ports").tolist()
        sd_file = os.environ.get("DAP_HVD_SD_FILE")
        if world.is_root and sd_file and record_ports(sd_file, ports) is None:
            log.warning("metrics ports %s not recorded in %s: missing, or not one target per rank", ports, sd_file)
    return metrics


class _LiveCounts:
    """Host-side sample counts of the current epoch: counted, published, since when."""

    def __init__(self, since: float):
        self.pending, self.published, self.since = 0, 0, since


class _ScrapeWatch:
    """A collector with no metrics of its own: it counts the scrapes of the registry."""

    def __init__(self):
        self.count = 0
        self._cond = threading.Condition()

    def describe(self):
        return []  # so registering it does not count as a scrape

    def collect(self):
        with self._cond:
            self.count += 1
            self._cond.notify_all()
        return []

    def wait_next(self, timeout: float) -> bool:
        with self._cond:
            seen = self.count
            return self._cond.wait_for(lambda: self.count > seen, timeout=timeout)
