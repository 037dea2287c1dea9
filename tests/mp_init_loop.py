"""hvd.init() / hvd.shutdown() in a loop, with an allreduce each time that proves the peers of
this round, not of an earlier one: under horovodrun --gloo the launcher's rendezvous server must
serve every new round (Horovod fix (e) in scripts/build_horovod.sh). Prints 'LOOP {json}'."""

import json
import sys

import horovod.torch as hvd
import torch

cycles = int(sys.argv[1])
for i in range(cycles):
    hvd.init()
    got = hvd.allreduce(torch.tensor([float(i), float(hvd.rank())]), op=hvd.Sum, name=f"cycle.{i}")
    assert got.tolist() == [float(i * hvd.size()), float(sum(range(hvd.size())))], (i, got.tolist())
    rank = hvd.rank()
    hvd.shutdown()
print("LOOP " + json.dumps({"rank": rank, "cycles": cycles}), flush=True)
