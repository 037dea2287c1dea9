"""The real stack: Horovod over Gloo (horovodrun) and over MPI (mpirun + mpi4py), 2 ranks."""

import pytest
from conftest import PY, REPO, horovodrun, mpirun, rank_json

pytestmark = pytest.mark.multirank
SCRIPT = str(REPO / "tests" / "mp_collectives.py")


def _check(results, n):
    assert sorted(results) == list(range(n))
    for res in results.values():
        assert res["size"] == n
        assert res["sum"] == [float(sum(range(1, n + 1))), 10.0 * sum(range(n))]
        assert res["gather"] == [100 * q + i for q in range(n) for i in range(q + 1)]  # uneven lengths
        assert res["bcast"] == [7 + 2**40]


def test_stack_imports_with_gloo_and_mpi():
    import horovod.torch as hvd
    import mpi4py  # noqa: F401
    import nvidia.dali  # noqa: F401
    import prometheus_client  # noqa: F401
    import torchvision  # noqa: F401

    assert hvd.gloo_built() and hvd.mpi_built()


def test_horovodrun_gloo_two_ranks():
    p = horovodrun(2, [PY, SCRIPT], timeout=120)
    res = rank_json(p.stdout, "RESULT ")
    _check(res, 2)
    assert all(v["gloo"] for v in res.values())


def test_mpirun_two_ranks_with_mpi4py_comm():
    p = mpirun(2, [PY, SCRIPT, "--mpi4py"], timeout=120)
    res = rank_json(p.stdout, "RESULT ")
    _check(res, 2)
    assert all(v["mpi"] and v["mpi4py"] for v in res.values())


def test_a_failing_rank_fails_the_job_without_hanging(tmp_path):
    script = tmp_path / "die.py"
    script.write_text("import horovod.torch as hvd, torch, sys\nhvd.init()\n"
                      "if hvd.rank() == 1: sys.exit(3)\n"
                      "hvd.allreduce(torch.ones(1), name='never')\n")
    p = horovodrun(2, [PY, str(script)], timeout=120, check=False)
    assert p.returncode != 0


def test_init_and_shutdown_in_a_loop_under_horovodrun():
    """A job that calls hvd.shutdown() and hvd.init() again (as an elastic reset does) must get
    this round's peers from the launcher. Unpatched, the launcher's rendezvous server cleared
    every scope's finished list when one finished: stale peers, "Connection refused", an abort
    in 5 of 7 runs of 60 cycles."""
    p = horovodrun(2, [PY, str(REPO / "tests" / "mp_init_loop.py"), "60"], timeout=150)
    res = rank_json(p.stdout, "LOOP ")
    assert sorted(res) == [0, 1] and all(v["cycles"] == 60 for v in res.values())


def test_a_job_wide_error_travels_through_the_launchers_rendezvous_store(monkeypatch):
    """notice.py on the real rendezvous server horovodrun starts: nothing announced reads as None
    (a plain lost host: re-form as before); an announced error reads back for the survivors."""
    from horovod.runner.http.http_server import RendezvousServer

    from dap_hvd import notice

    server = RendezvousServer()
    port = server.start()
    try:
        monkeypatch.setenv("HOROVOD_ELASTIC", "1")
        monkeypatch.setenv("HOROVOD_GLOO_RENDEZVOUS_ADDR", "127.0.0.1")
        monkeypatch.setenv("HOROVOD_GLOO_RENDEZVOUS_PORT", str(port))
        monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # a proxy must not be used
        assert notice.fatal_announced() is None
        notice.announce_fatal("rank 1: cannot decode /data/x.jpg")
        assert notice.fatal_announced() == "rank 1: cannot decode /data/x.jpg"
        monkeypatch.delenv("HOROVOD_ELASTIC")
        assert notice.fatal_announced() is None  # outside elastic mode it is never consulted
    finally:
        server.stop()
