"""Beat's housekeeping task keeps the job index in step with record expiry."""

from app.jobs.records import JobStore, job_key


def test_prune_index_drops_only_expired_jobs(test_redis, operator, unique, cleanup):
    from tests.integration.helpers import BUSYBOX

    cleanup.append(unique)
    live = operator.post("/hosts/local/containers", params={"wait": 30}, json={
        "image": BUSYBOX, "name": unique, "command": ["sleep", "30"]}).json()["id"]
    store = JobStore(test_redis, 3600)
    test_redis.zadd("dy:jobs", {"00000000000000000000000000": 0})  # a record long expired
    assert store.prune_index() >= 1
    remaining = set(test_redis.zrange("dy:jobs", 0, -1))
    assert "00000000000000000000000000" not in remaining
    assert live in remaining and test_redis.exists(job_key(live, "local"))
