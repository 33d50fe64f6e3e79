"""`tune --ray`: the same trials through Ray tasks give the same values as the local pool."""
from __future__ import annotations

import pytest
from tuning_helpers import trial_values

from streamserve.tuning.runners import LocalPool, RayRunner

ray = pytest.importorskip("ray")


@pytest.mark.ray
def test_ray_and_the_local_pool_give_identical_trial_values():
    local = trial_values(LocalPool(1))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        runner = RayRunner("auto")  # finds the instance started above and leaves it running
        remote = trial_values(runner)
        runner.close()
        assert ray.is_initialized()
    finally:
        ray.shutdown()
    assert remote == local
    assert all(len(per_seed["goodput"]) == 2 for _, _, per_seed in local)
