"""Packing through the search: with a fractional ``ray.gpus_per_worker`` the proxy workers share one GPU and
`hyla search run` keeps all of them training at once (the CPU stands in for the GPU: Ray is told it has one)."""

from __future__ import annotations

import os
from pathlib import Path

import ray

from hyla.search.config import study_config_from_dict
from hyla.search.prepare import prepare
from hyla.search.storage import load_rung_studies
from hyla.search.study import run_search
from hyla.search.workers import get_pool, shutdown_pools
from test_search_helpers import PROXY, SPACE, study_dict

RAY_CFG = {"num_workers": 2, "cpus_per_worker": 1, "gpus_per_worker": 0.5}


def test_half_gpus_put_two_workers_on_one_gpu_and_two_trials_in_flight(tmp_path: Path) -> None:
    shutdown_pools()
    ray.shutdown()  # the session's Ray has no GPU
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, object_store_memory=128 * 2**20, log_to_driver=False,
             logging_level="warning")
    try:
        space = {**SPACE, "mixers": ["gla", "hgrn", "retnet", "hgrn2"]}
        cfg = study_config_from_dict(study_dict(tmp_path, "pack", n_trials=2, space=space, ray=RAY_CFG, seed=3,
                                                rungs=[{"proxy": {**PROXY, "steps": 8}}]), where="pack.yaml")
        # Warm the pool first (the search reuses it), so that worker start-up skew does not serialise the trials.
        pool = get_pool(2, 1, 0.5)
        for ref in list(pool.starting):
            ray.get(ref)
            pool.started(ref)
        assert pool.num_gpus == 0.5 and len(pool.ready_slots()) == 2
        # Ray gave every worker the one GPU (half each): both see device 0
        visible = ray.get([a.__ray_call__.remote(lambda self: os.environ.get("CUDA_VISIBLE_DEVICES"))
                           for a in pool.actors])
        assert visible == ["0"] * 2
        run_search(cfg)
        trials = load_rung_studies(prepare(cfg).storage, cfg.name)[0].get_trials()
        assert len({t.user_attrs["layout_key"] for t in trials}) == 2  # distinct layouts: none reused
        assert all(t.user_attrs["status"] == "ok" for t in trials)
        assert len({t.user_attrs["worker_node"]["pid"] for t in trials}) == 2  # one trial per worker ...
        # ... all in flight together: the last trial started before the first one finished
        assert max(t.datetime_start for t in trials) < min(t.datetime_complete for t in trials)
        assert ray.available_resources().get("GPU", 0.0) == 0.0  # the GPU is fully taken by the workers
    finally:
        shutdown_pools()
        ray.shutdown()
