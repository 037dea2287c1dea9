"""Run under horovodrun or mpirun: allreduce, uneven allgather and broadcast across ranks.
With --mpi4py, mpi4py's COMM_WORLD is handed to hvd.init (Horovod over MPI)."""

import json
import sys

import torch

comm = None
if "--mpi4py" in sys.argv:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
import horovod.torch as hvd  # noqa: E402

hvd.init(comm) if comm is not None else hvd.init()
r, n = hvd.rank(), hvd.size()
s = hvd.allreduce(torch.tensor([float(r + 1), 10.0 * r]), op=hvd.Sum, name="sum")
g = hvd.allgather(torch.arange(r + 1, dtype=torch.int64) + 100 * r, name="uneven")  # length r+1
big = torch.tensor([2**40 + r], dtype=torch.int64)  # int64 survives: floats would not
b = hvd.broadcast(torch.tensor([7 * (r + 1)], dtype=torch.int64) + big * (r == 0), root_rank=0, name="bcast")
sys.stdout.write("RESULT " + json.dumps(dict(rank=r, size=n, sum=s.tolist(), gather=g.tolist(), bcast=b.tolist(),
                                             mpi=hvd.mpi_enabled(), gloo=hvd.gloo_enabled(),
                                             mpi4py=comm is not None and comm.Get_size() == n)) + "\n")
sys.stdout.flush()  # one write per line: ranks share mpirun's pipe
