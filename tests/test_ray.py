"""Trial groups on a local Ray cluster of 2 CPUs: the results, checkpoints and resume of a run
are those of a local run. Skipped where Ray is not installed (it is an optional extra)."""

from __future__ import annotations

import pytest

from lstmkit.reproduce import cluster, runner
from lstmkit.train.checkpoint import load_checkpoint

ray = pytest.importorskip("ray")

_RUN = dict(setting="paper", trials=3, seed=0, max_sequences=200, progress=False,
            task_params={"T": 12}, checkpoint_every=100)


def _essentials(result):
    return [(t.seed, t.success, t.sequences, t.milestones, t.test.wrong, t.curve.loss)
            for t in result.trials]


@pytest.fixture(scope="module")
def local_cluster():
    cluster.shutdown()
    try:
        cluster.run_on_ray("local", runner.run_group, [], cpus=2)  # starts it, 2 CPUs
    except Exception as err:  # noqa: BLE001 - a machine where Ray cannot start at all
        pytest.skip(f"a local Ray cluster cannot start here: {type(err).__name__}: {err}")
    yield
    cluster.shutdown()


def test_a_run_on_ray_equals_the_local_run_and_resumes_from_its_checkpoints(
        tmp_path, local_cluster):
    here = runner.run("exp3a", **_RUN, workers=2, out=tmp_path / "here")
    there = runner.run("exp3a", **_RUN, workers=2, out=tmp_path / "ray", ray="local")
    assert _essentials(there) == _essentials(here)
    for seed in range(3):
        a = load_checkpoint(tmp_path / "here" / "checkpoints" / f"trial-{seed}.pt")
        b = load_checkpoint(tmp_path / "ray" / "checkpoints" / f"trial-{seed}.pt")
        assert a["sequences"] == b["sequences"] == 200
        for name, w in a["model"].items():
            assert b["model"][name].equal(w), name
    again = runner.run("exp3a", **_RUN, workers=2, out=tmp_path / "ray", ray="local",
                       resume=True)
    assert _essentials(again) == _essentials(here)


def test_without_a_cluster_address_the_error_names_the_argument(local_cluster):
    with pytest.raises(ValueError, match="ray: expected a cluster address"):
        cluster.run_on_ray("", runner.run_group, [])
