"""Distributed merge + selection across real Gloo ranks: identical on every rank, equal to the
single-process answer, for uneven sizes, both merge methods, and no hang."""

import pytest
from conftest import PY, REPO, horovodrun, rank_json

pytestmark = pytest.mark.multirank
SCRIPT = str(REPO / "tests" / "mp_selection.py")


@pytest.mark.parametrize("np_,n,method", [(2, 1001, "allreduce"), (3, 1000, "allreduce"), (3, 997, "allgather"),
                                          (2, 7, "allgather")])
def test_selection_identical_on_every_rank(np_, n, method):
    p = horovodrun(np_, [PY, SCRIPT, "--subset-size", n, "--method", method], timeout=120)
    res = rank_json(p.stdout, "RESULT ")
    assert sorted(res) == list(range(np_))
    digests = {r["digest"] for r in res.values()}
    assert len(digests) == 1
    assert res[0]["digest"] == res[0]["expected"]  # same as one process sorting the global losses
    assert all(r["merged_equal"] for r in res.values())  # padding duplicates were not double-counted
    assert len({r["steps"] for r in res.values()}) == 1  # equal step counts: nobody waits forever
    assert sum(r["padding"] for r in res.values()) == (-n) % np_
    assert res[0]["size"] == max(1, int(0.9 * n))
    if method == "allgather":  # int64 position + float32 loss per real sample, counted exactly
        assert all(r["bytes_sent"] == 12 * r["real"] for r in res.values())


def test_random_strategy_is_broadcast_identically():
    p = horovodrun(3, [PY, SCRIPT, "--subset-size", 500, "--strategy", "random"], timeout=120)
    res = rank_json(p.stdout, "RESULT ")
    assert len({r["digest"] for r in res.values()}) == 1


def test_non_finite_loss_stops_every_rank_with_the_sample():
    res = rank_json(horovodrun(2, [PY, SCRIPT, "--subset-size", 101, "--nan-at", 5], timeout=120).stdout, "RESULT ")
    assert {r["status"] for r in res.values()} == {"diverged"}
    assert all("epoch 4" in r["error"] for r in res.values())
