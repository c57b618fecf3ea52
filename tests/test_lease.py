"""Per-exposure leases (crscale.io.lease): exclusive, expiring, taken over from dead runs.

On a real local file system and on a real S3 server (moto, which implements conditional PUTs).
The two-runs-at-once test with real ``crscale run`` processes is in test_concurrent_runs.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest

from crscale.io.lease import Leases


def test_one_holder_at_a_time_and_release(tmp_path):
    a, b = Leases(tmp_path / "a.zarr"), Leases(tmp_path / "a.zarr")
    lease = a.acquire("exp1", stage="detect")
    assert lease is not None and lease.generation == 0
    assert b.acquire("exp1") is None
    assert b.holder("exp1")["detail"] == {"stage": "detect"}
    assert a.acquire("exp1") is lease  # the holder asking again keeps it
    # A name that is a prefix of another (ids with dots) is a different lease.
    assert b.acquire("exp1.N2") is not None
    a.release("exp1")
    assert b.holder("exp1") is None
    assert b.acquire("exp1") is not None
    a.release_all()
    b.release_all()
    assert list((tmp_path / "a.zarr" / "jobs" / "leases" / "exposures").iterdir()) == []


def _race(runs: list[Leases]) -> list[Leases]:
    """The runs that got the lease "exp" when all asked at the same moment."""
    won = []
    barrier = threading.Barrier(len(runs))

    def race(leases):
        barrier.wait()
        if leases.acquire("exp") is not None:
            won.append(leases)

    threads = [threading.Thread(target=race, args=(r,)) for r in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return won


def test_racing_runs_get_exactly_one_lease(tmp_path):
    won = _race([Leases(tmp_path / "a.zarr") for _ in range(8)])
    assert len(won) == 1
    won[0].release_all()


def test_expired_lease_is_taken_over_once_and_the_old_holder_notices(tmp_path):
    old = Leases(tmp_path / "a.zarr", seconds=0.3)
    first = old.acquire("exp")
    old._stop.set()  # a run that stopped renewing (hung or on a lost node)
    other = Leases(tmp_path / "a.zarr", seconds=30)
    assert other.acquire("exp") is None
    time.sleep(0.5)
    taken = other.acquire("exp")
    assert taken is not None and taken.generation == first.generation + 1
    assert not first.path.exists()  # the expired generation is removed by the taker
    old.renew()  # the old holder finds it lost the lease, and lets go of it
    assert "exp" not in old._held
    old.release("exp")  # and giving it back does not remove the new holder's lease
    assert taken.path.exists()


def test_renewal_keeps_a_lease_alive(tmp_path):
    holder = Leases(tmp_path / "a.zarr", seconds=0.4)
    assert holder.acquire("exp") is not None
    time.sleep(1.0)  # several lease lengths: the heartbeat renews every quarter of one
    assert Leases(tmp_path / "a.zarr").acquire("exp") is None
    holder.release_all()


def test_lease_of_a_killed_process_on_this_host_is_free_at_once(tmp_path):
    code = (
        "import sys, time; from crscale.io.lease import Leases;"
        f"Leases({str(tmp_path / 'a.zarr')!r}, seconds=3600).acquire('exp'); print('held', flush=True);"
        "time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        assert Leases(tmp_path / "a.zarr").acquire("exp") is None
    finally:
        proc.kill()
        proc.wait()
    record = json.loads(next((tmp_path / "a.zarr" / "jobs" / "leases" / "exposures").iterdir()).read_text())
    assert record["expires"] > time.time() + 3000  # not expired: taken over because its pid is gone
    assert Leases(tmp_path / "a.zarr").acquire("exp") is not None


@pytest.fixture(scope="module")
def bucket():
    """A moto S3 server on localhost (moto implements S3's conditional PUT, If-None-Match)."""
    import logging

    from moto.server import ThreadedMotoServer

    from crscale.io import storage

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    # s3fs keeps one filesystem per set of options, and the endpoint is not one of them (it comes
    # from the environment): an instance left by another module's server would call a dead port.
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "crscale-test",
           "AWS_SECRET_ACCESS_KEY": "crscale-test", "AWS_DEFAULT_REGION": "us-east-1"}
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        storage.filesystem("s3://leases-test")[0].mkdir("leases-test")
        yield "s3://leases-test/a.zarr"
    server.stop()


def test_leases_on_s3_are_exclusive_conditional_puts(bucket):
    runs = [Leases(bucket) for _ in range(6)]
    won = _race(runs)
    assert len(won) == 1
    assert [r.holder("exp") is None for r in runs] == [r is won[0] for r in runs]
    won[0].release_all()
    again = Leases(bucket)
    assert again.acquire("exp") is not None
    again.release_all()
