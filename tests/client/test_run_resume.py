"""A finished run id is refused unless the run says it continues it (--resume / resume=True), which makes it
the run's next segment; the segment gauges are pushed; `carbonwatch run` takes the model from CARBONWATCH_MODEL."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from carbonwatch.client.api import Run
from carbonwatch.client.pusher import RunCollector
from carbonwatch.errors import ConfigError
from tests.client.test_client_cli import cw, finish, records

PY = sys.executable


def local_run(runs: Path, run_id: str, **kw: object) -> Run:
    return Run(run_id=run_id, user="alice", runs_file=runs, summary=False, local_meter=False, **kw)


def test_a_finished_run_id_is_refused_and_resume_continues_it_as_segment_two(tmp_path: Path) -> None:
    runs = tmp_path / "runs.jsonl"
    with local_run(runs, "rid-1") as first:
        pass
    with pytest.raises(ConfigError, match=r"run rid-1 already finished \(found in the runs file\).*--resume"):
        local_run(runs, "rid-1")
    second = local_run(runs, "rid-1", resume=True)
    assert second.segment.number == 2
    assert second.progress_state.snapshot().start_time == pytest.approx(first.record["start_time"], abs=1e-3)
    with second:
        pass
    recs = [json.loads(line) for line in runs.read_text().splitlines()]
    assert [r.get("segment") for r in recs] == [1, 2]
    assert recs[1]["first_start_time"] == recs[0]["start_time"]
    assert recs[1]["start_time"] > recs[0]["end_time"]  # the record's own figures are the segment's
    with pytest.raises(ConfigError, match="already finished"):
        local_run(runs, "rid-1")  # a resumed run is finished too
    assert local_run(runs, "rid-1", resume=True).segment.number == 3


def test_the_segment_gauges_are_pushed_with_the_first_start(tmp_path: Path) -> None:
    runs = tmp_path / "runs.jsonl"
    with local_run(runs, "rid-seg"):
        pass
    run = local_run(runs, "rid-seg", resume=True)
    got = {m.name: m.samples[0].value for m in RunCollector(run.progress_state).collect() if m.samples}
    first = json.loads(runs.read_text().splitlines()[0])["start_time"]
    assert got["carbonwatch_run_segment"] == 2
    assert got["carbonwatch_run_start_time_seconds"] == pytest.approx(first, abs=1e-3)
    assert got["carbonwatch_run_segment_start_time_seconds"] > got["carbonwatch_run_start_time_seconds"]
    fresh = local_run(runs, "rid-new")
    got = {m.name: m.samples[0].value for m in RunCollector(fresh.progress_state).collect() if m.samples}
    assert got["carbonwatch_run_segment"] == 1
    assert got["carbonwatch_run_segment_start_time_seconds"] == got["carbonwatch_run_start_time_seconds"]


@pytest.mark.slow  # `carbonwatch run` processes
def test_the_cli_refuses_a_finished_run_id_with_exit_2_and_resumes_with_the_flag(env: dict[str, str]) -> None:
    argv = ("run", "--run-id", "cli-again", "--no-local-meter", "--", PY, "-c", "pass")
    assert finish(cw(*argv, env=env))[0] == 0
    rc, _, err = finish(cw(*argv, env=env))
    assert rc == 2, err
    assert "run cli-again already finished" in err and "--resume" in err
    rc, _, err = finish(cw("run", "--resume", *argv[1:], env=env))
    assert rc == 0, err
    assert "segment       2 (resumed" in err
    assert [r["segment"] for r in records(env)] == [1, 2]
    rc, _, err = finish(cw("run", "--resume", "--", PY, "-c", "pass", env=env))
    assert rc == 2 and "--resume: needs --run-id" in err


@pytest.mark.slow  # `carbonwatch run` processes
def test_carbonwatch_run_takes_the_model_from_the_environment(env: dict[str, str]) -> None:
    rc, _, err = finish(cw("run", "--run-id", "env-model", "--no-local-meter", "--", PY, "-c", "pass",
                           env=dict(env, CARBONWATCH_MODEL="resnet18")))
    assert rc == 0, err
    assert records(env)[-1]["model"] == "resnet18"
    rc, _, err = finish(cw("run", "--run-id", "flag-model", "--model", "vit", "--no-local-meter", "--", PY, "-c",
                           "pass", env=dict(env, CARBONWATCH_MODEL="resnet18")))
    assert records(env)[-1]["model"] == "vit"  # the flag wins


@pytest.mark.slow
def test_a_run_id_that_finished_elsewhere_is_known_from_prometheus(tmp_path: Path) -> None:
    """No local record (another machine ran it): Prometheus' end time refuses the id, and its segment and first
    start make the resumed run segment 3 starting where the run first started."""
    import shutil
    import time

    from tests.support import Prometheus

    if shutil.which("promtool") is None or shutil.which("prometheus") is None:
        pytest.skip("prometheus not installed")
    now = int(time.time()) - 600
    lab = 'run_id="elsewhere",job="carbonwatch_run"'
    prom = Prometheus.from_series(tmp_path, {
        "carbonwatch_run_start_time_seconds": [(lab, now - 3600, t) for t in (now - 60, now)],
        "carbonwatch_run_end_time_seconds": [(lab, now - 30, t) for t in (now - 20, now)],
        "carbonwatch_run_segment": [(lab, 2, t) for t in (now - 60, now)],
    })
    try:
        runs = tmp_path / "runs.jsonl"
        with pytest.raises(ConfigError, match=r"run elsewhere already finished \(found in Prometheus\)"):
            local_run(runs, "elsewhere", prometheus=prom.url)
        resumed = local_run(runs, "elsewhere", prometheus=prom.url, resume=True)
        assert resumed.segment.number == 3
        assert resumed.progress_state.snapshot().start_time == now - 3600
        assert local_run(runs, "never-ran", prometheus=prom.url).segment.number == 1
    finally:
        prom.stop()


def test_a_callback_that_trains_again_continues_its_run_as_the_next_segment(tmp_path: Path) -> None:
    """trainer.fit twice with one callback and a fixed run id: not refused mid-training, one run, two segments."""
    from carbonwatch.callbacks._common import RunHolder

    runs = tmp_path / "runs.jsonl"
    holder = RunHolder(run_id="fit-twice", user="alice", runs_file=runs, summary=False, local_meter=False)
    for _ in range(2):
        holder.begin()
        holder.end()
    assert [json.loads(line)["segment"] for line in runs.read_text().splitlines()] == [1, 2]
