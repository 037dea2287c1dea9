"""The engine's selection signal: the ledger holds plain cross-entropy, never the smoothed loss."""

import copy

import numpy as np
import torch
import torch.nn.functional as F

from dap_hvd.data.sharding import Shard
from dap_hvd.data.spec import Batch
from dap_hvd.engine import Precision, train_one_epoch
from dap_hvd.ledger import LossLedger
from dap_hvd.lr import LRSchedule
from dap_hvd.policy.policies import drop_keep


class ListLoader:
    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)

    def close(self):
        pass


def _identity_model(k):
    model = torch.nn.Linear(k, k, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(k))
    return model


def test_ledger_records_plain_cross_entropy_and_dap_ranks_by_it():
    k = 10
    # Sample 5 is predicted right with near certainty (p_y ~ 1), sample 9 with p_y = 0.68. The
    # label-smoothed loss (eps 0.1) ranks the certain one as harder (1.8 vs 0.65); cross-entropy
    # ranks it as easier, as the paper means.
    logits = torch.zeros(2, k)
    logits[0, 3] = 20.0
    logits[1, 4] = float(np.log(0.68 * 9 / 0.32))
    targets = torch.tensor([3, 4])
    smoothed = F.cross_entropy(logits, targets, reduction="none", label_smoothing=0.1)
    plain = F.cross_entropy(logits, targets, reduction="none")
    assert smoothed[0] > smoothed[1] and plain[0] < plain[1]

    subset = np.array([5, 9], dtype=np.int64)
    class_of = torch.zeros(10, dtype=torch.int64)
    class_of[5], class_of[9] = 3, 4
    ledger = LossLedger(subset, torch.device("cpu"))
    model = _identity_model(k)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    tags = torch.from_numpy(Shard(subset, np.array([True, True]), 1).encoded_labels())
    stats = train_one_epoch(model=model, loader=ListLoader([Batch(logits.clone(), tags)]), optimizer=optimizer,
                            label_smoothing=0.1, lr_schedule=LRSchedule(0.0, 0, 1, "step"), global_step=0,
                            class_of=class_of, precision=Precision(torch.device("cpu"), None, False), ledger=ledger)
    assert torch.equal(ledger.loss, plain) and ledger.count.tolist() == [1.0, 1.0]
    # the reported training loss stays the smoothed one the gradient used
    assert abs(stats.loss_sum - float(smoothed.sum())) < 1e-5
    kept = drop_keep("dap", subset, ledger.loss.numpy(), 1, seed=0, epoch=1)
    assert kept.tolist() == [9]


def test_a_non_finite_padding_loss_cannot_poison_the_real_sample():
    ledger = LossLedger(np.array([2, 4], dtype=np.int64), torch.device("cpu"))
    ledger.record(torch.tensor([2, 4, 2]), torch.tensor([0.5, 1.5, float("inf")]), torch.tensor([True, True, False]))
    assert ledger.loss.tolist() == [0.5, 1.5] and ledger.count.tolist() == [1.0, 1.0]


def test_logits_are_fp32_under_autocast_and_checkpoint_keys_do_not_change():
    from dap_hvd.models import Fp32Linear, build_model, fp32_classifier

    model = build_model("resnet_small", 10)
    keys = list(model.state_dict())
    fp32_classifier(model).eval()
    assert list(model.state_dict()) == keys and sum(isinstance(m, Fp32Linear) for m in model.modules()) == 1
    x = torch.randn(4, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
    assert logits.dtype == torch.float32
    head = next(m for m in model.modules() if isinstance(m, Fp32Linear))
    features = {}
    head.register_forward_hook(lambda mod, inp, out: features.update(x=inp[0]))  # returns None: output kept
    with torch.autocast("cpu", dtype=torch.bfloat16):
        again = model(x)
    exact = torch.nn.functional.linear(features["x"].float(), head.weight, head.bias)
    assert torch.equal(again, exact)  # the head itself ran in fp32, not bf16


def test_loss_weights_scale_the_gradient_and_never_the_recorded_scores():
    """InfoBatch's 1/(1-r) reaches the gradient of its sample only; the ledger keeps plain CE."""
    k = 4
    subset = np.array([1, 3], dtype=np.int64)
    class_of = torch.tensor([0, 1, 0, 2])
    logits = torch.tensor([[0.5, 0.1, 0.0, 0.2], [0.0, 0.3, 0.9, 0.1]])
    tags = torch.from_numpy(Shard(subset, np.array([True, True]), 1).encoded_labels())

    def one_step(weight_of):
        model = _identity_model(k)
        ledger = LossLedger(subset, torch.device("cpu"))
        train_one_epoch(model=model, loader=ListLoader([Batch(logits.clone(), tags)]),
                        optimizer=torch.optim.SGD(model.parameters(), lr=1.0), label_smoothing=0.0,
                        lr_schedule=LRSchedule(1.0, 0, 1, "step"), global_step=0, class_of=class_of,
                        precision=Precision(torch.device("cpu"), None, False), ledger=ledger, weight_of=weight_of)
        return torch.eye(k) - model.weight.detach(), ledger.loss  # the gradient step taken, the scores

    plain_step, plain_scores = one_step(None)
    w = torch.ones(4)
    w[3] = 2.0
    weighted_step, weighted_scores = one_step(w)
    assert torch.equal(weighted_scores, plain_scores)  # the scores are unweighted
    # the gradient is linear in each sample's loss: row-wise, sample 3's part doubles
    x0, x1 = logits[0], logits[1]
    # the gradient of the mean loss is the batch mean of outer(dL/dz, x)
    p0, p1 = torch.softmax(x0, 0), torch.softmax(x1, 0)
    d0, d1 = p0 - F.one_hot(torch.tensor(1), k), p1 - F.one_hot(torch.tensor(2), k)
    assert torch.allclose(plain_step, (torch.outer(d0, x0) + torch.outer(d1, x1)) / 2, atol=1e-6)
    assert torch.allclose(weighted_step, (torch.outer(d0, x0) + 2 * torch.outer(d1, x1)) / 2, atol=1e-6)


def test_a_shorter_epoch_walks_the_lr_span_of_a_full_one():
    """step_scale: an epoch of 2 steps on a grid span of 4 takes the LR at positions 0 and 2."""
    seen = []

    class Spy(LRSchedule):
        def __call__(self, step):
            seen.append(step)
            return super().__call__(step)

    subset = np.array([0, 1], dtype=np.int64)
    tags = torch.from_numpy(Shard(subset, np.array([True, True]), 1).encoded_labels())
    batches = [Batch(torch.zeros(1, 2), tags[:1]), Batch(torch.zeros(1, 2), tags[1:])]
    model = torch.nn.Linear(2, 2)
    stats = train_one_epoch(model=model, loader=ListLoader(batches),
                            optimizer=torch.optim.SGD(model.parameters(), lr=0.1), label_smoothing=0.0,
                            lr_schedule=Spy(0.1, 0, 100, "step"), global_step=8, step_scale=2.0,
                            class_of=torch.tensor([0, 1]), precision=Precision(torch.device("cpu"), None, False))
    assert seen == [8, 8.0, 10.0] and stats.steps == 2  # the next epoch starts at 8 + 2 * 2


def test_a_partial_batch_skips_cudnn_autotuning_and_the_setting_comes_back(monkeypatch):
    """cuDNN's autotuner pays again for every new input shape, and a DaP epoch ends in a batch of
    a new size nearly every epoch (BENCHMARKS.md, GPU). Full batches keep the tuned kernels;
    the last, partial one (training and evaluation) runs with cudnn.benchmark off; the user's
    setting is restored afterwards."""
    from dap_hvd.engine import evaluate

    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    seen = []

    class Spy(torch.nn.Linear):
        def forward(self, x):
            seen.append((len(x), torch.backends.cudnn.benchmark))
            return super().forward(x)

    subset = np.arange(5, dtype=np.int64)
    tags = torch.from_numpy(Shard(subset, np.ones(5, dtype=bool), 1).encoded_labels())
    batches = [Batch(torch.zeros(2, 2), tags[:2]), Batch(torch.zeros(2, 2), tags[2:4]),
               Batch(torch.zeros(1, 2), tags[4:])]
    model = Spy(2, 2)
    args = dict(class_of=torch.zeros(5, dtype=torch.int64), precision=Precision(torch.device("cpu"), None, False))
    train_one_epoch(model=model, loader=ListLoader(batches), optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                    label_smoothing=0.0, lr_schedule=LRSchedule(0.1, 0, 100, "step"), global_step=0, **args)
    evaluate(model=model, loader=ListLoader(batches), **args)
    assert seen == [(2, True), (2, True), (1, False)] * 2
    assert torch.backends.cudnn.benchmark is True


def test_compiled_model_runs_full_batches_and_the_partial_one_runs_eagerly():
    """--compile: one graph, for the full batch size. The epoch's last, partial batch runs the
    eager model (a new size would recompile every epoch), and training is the same computation:
    the compiled run's parameters equal an eager run's from the same start."""
    from torch._dynamo.testing import CompileCounter

    torch.manual_seed(0)
    eager = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 3))
    twin = copy.deepcopy(eager)
    subset = np.arange(7, dtype=np.int64)
    tags = torch.from_numpy(Shard(subset, np.ones(7, dtype=bool), 1).encoded_labels())
    images = torch.randn(7, 3, 6, 6)
    batches = [Batch(images[:3], tags[:3]), Batch(images[3:6], tags[3:6]), Batch(images[6:], tags[6:])]
    counter = CompileCounter()
    compiled = torch.compile(twin, backend=counter, dynamic=False)
    torch._dynamo.reset()
    args = dict(loader=ListLoader(batches), label_smoothing=0.0, lr_schedule=LRSchedule(0.1, 0, 100, "step"),
                global_step=0, class_of=torch.tensor([0, 1, 2, 0, 1, 2, 0]),
                precision=Precision(torch.device("cpu"), None, False))
    a = train_one_epoch(model=eager, optimizer=torch.optim.SGD(eager.parameters(), lr=0.1), **args)
    b = train_one_epoch(model=twin, optimizer=torch.optim.SGD(twin.parameters(), lr=0.1), compiled=compiled, **args)
    assert counter.frame_count == 1 and b.steps == 3
    assert a.loss_sum == b.loss_sum
    for p, q in zip(eager.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_a_shard_smaller_than_one_batch_is_never_compiled():
    """A rank whose shard is smaller than --batch-size trains one partial batch per epoch, of a
    new size each time (DaP shrinks the subset). It is not a full batch: it runs eagerly (and so
    untuned, test above) instead of compiling a graph for every epoch's size until dynamo's cache
    limit. Full batches of --batch-size still share one compiled graph."""
    from torch._dynamo.testing import CompileCounter

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    counter = CompileCounter()
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=counter, dynamic=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def epoch(size, batch=None):
        subset = np.arange(size, dtype=np.int64)
        tags = torch.from_numpy(Shard(subset, np.ones(size, dtype=bool), 1).encoded_labels())
        batches = [Batch(torch.randn(len(t), 4), t) for t in tags.split(batch or size)]
        return train_one_epoch(model=model, loader=ListLoader(batches), optimizer=opt, label_smoothing=0.0,
                               lr_schedule=LRSchedule(0.1, 0, 100, "step"), global_step=0,
                               class_of=torch.zeros(size, dtype=torch.int64),
                               precision=Precision(torch.device("cpu"), None, False), compiled=compiled,
                               batch_size=8)

    for size in (7, 5, 3):  # shards smaller than one batch of 8, one per epoch
        epoch(size)
    assert counter.frame_count == 0
    epoch(16, batch=8)  # two full batches: one compiled graph
    assert counter.frame_count == 1


def test_the_skip_test_is_the_gradscalers_any_inf_or_nan_gradient():
    """fp16: the engine counts a step as skipped when a gradient is inf or NaN, the GradScaler's
    own rule (a device bool, no sync). The end-to-end count is checked against the loss scale in
    test_train's fp16 test."""
    from dap_hvd.engine import gradients_finite

    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    assert bool(gradients_finite(opt))
    model.weight.grad[0, 1] = float("inf")
    assert not bool(gradients_finite(opt))
    model.weight.grad[0, 1] = float("nan")
    assert not bool(gradients_finite(opt))


def test_divergence_is_a_non_finite_loss_or_model_or_a_scaler_that_gave_up():
    from dap_hvd.engine import divergence

    assert divergence(12.5, nonfinite_parameters=False, skipped=0, steps=10, loss_scale=None) is None
    assert "nan" in divergence(float("nan"), nonfinite_parameters=False, skipped=0, steps=10, loss_scale=None)
    assert "inf" in divergence(float("inf"), nonfinite_parameters=False, skipped=0, steps=10, loss_scale=None)
    assert "parameters" in divergence(1.0, nonfinite_parameters=True, skipped=0, steps=10, loss_scale=None)
    # fp16: skipped steps are the scale search (a whole 1-step epoch of it included), not divergence ...
    assert divergence(0.0, nonfinite_parameters=False, skipped=3, steps=10, loss_scale=2.0**13) is None
    assert divergence(0.0, nonfinite_parameters=False, skipped=1, steps=1, loss_scale=2.0**15) is None
    # ... until every step is skipped and the scale has run down below 1
    assert "GradScaler" in divergence(0.0, nonfinite_parameters=False, skipped=10, steps=10, loss_scale=2.0**-3)


def test_an_fp16_step_with_non_finite_gradients_is_skipped_counted_and_left_out_of_the_loss():
    """The GradScaler's step (through dist.reduced_gradients, a no-op for a plain optimizer): a
    step whose gradients overflow is skipped, counted on the device, and its losses are left out
    of the epoch's sums, so only the steps taken reach the divergence check."""
    model = torch.nn.Linear(2, 2)
    subset = np.arange(2, dtype=np.int64)
    tags = torch.from_numpy(Shard(subset, np.ones(2, dtype=bool), 1).encoded_labels())
    batches = [Batch(torch.ones(1, 2), tags[:1]), Batch(torch.full((1, 2), float("inf")), tags[1:])]
    scaler = torch.amp.GradScaler("cpu")
    stats = train_one_epoch(model=model, loader=ListLoader(batches),
                            optimizer=torch.optim.SGD(model.parameters(), lr=0.1), label_smoothing=0.0,
                            lr_schedule=LRSchedule(0.1, 0, 100, "step"), global_step=0,
                            class_of=torch.tensor([0, 1]), precision=Precision(torch.device("cpu"), None, False),
                            scaler=scaler)
    assert stats.steps == 2 and stats.skipped_steps == 1 and stats.loss_count == 1
    assert np.isfinite(stats.loss_sum) and stats.finite_parameters
    assert scaler.get_scale() < 2.0**16  # the skipped step halved the scale
