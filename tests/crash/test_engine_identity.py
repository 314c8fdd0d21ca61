"""Who an engine is: a fenced static member exits instead of idling, and two namespaces with
default settings run side by side on one cluster without fencing each other."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams.runtime.verify import check_outcomes
from streams.serde.codec import Codec
from tests.crash.conftest import Load, Stage
from tests.crash.test_engine_crash import assert_exactly_once, committed, drain, engine
from tests.pipeline import EngineProcess, committed_total, fresh_namespace, input_total, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.crash]


def test_a_fenced_static_member_exits_non_zero(stage: Stage, codec: Codec, log_dir: Path) -> None:
    load = Load(stage, count=20_000, rate=2000, seed=21).start()
    first = engine(stage, "same-id", log_dir).start()
    first.wait_assigned()
    before = committed(stage)
    wait_for(lambda: committed(stage) > before, 60, "the first engine to commit")
    # A second process with the same group.instance.id takes the membership over; the first is
    # fenced by the coordinator and must stop, not sit idle owning nothing.
    (log_dir / "second").mkdir()
    second = EngineProcess(stage.bootstrap, stage.ns, stage.group, "same-id", log_dir / "second",
                           args=["--snapshot-every", "1500", "--batch-size", "500"]).start()
    assert first.proc is not None
    code = first.proc.wait(90)
    assert code == 3, f"fenced engine exited {code}: see {first.log_path}"
    log = first.log_since_start()
    assert "engine stopping: fatal consumer error" in log and "fenced" in log.lower()
    load.join()
    drain(stage, second)
    assert_exactly_once(stage, codec)


def test_two_namespaces_with_default_identities_run_side_by_side(kafka_bootstrap: str, unique: str,
                                                                 codec: Codec, log_dir: Path) -> None:
    stages = [Stage(kafka_bootstrap, fresh_namespace(kafka_bootstrap, f"{unique}{side}"), "")
              for side in "ab"]
    # No group, instance or transactional id given: each engine derives its own from its namespace.
    engines = [EngineProcess(kafka_bootstrap, s.ns, None, None, log_dir, args=["--batch-size", "500"]).start()
               for s in stages]
    loads = [Load(s, count=5_000, rate=500, seed=30 + i).start() for i, s in enumerate(stages)]
    for s, process, load in zip(stages, engines, loads, strict=True):
        load.join()
        total = input_total(kafka_bootstrap, s.ns)
        wait_for(lambda s=s, p=process, t=total: p.alive() and committed_total(kafka_bootstrap, s.ns, p.group) >= t,
                 120, f"the engine of {s.ns.prefix} to consume all its input")
    for process in engines:
        assert process.stop() == 0, f"unclean exit: see {process.log_path}"
    for s in stages:
        outcomes = check_outcomes(kafka_bootstrap, codec, s.ns)
        assert outcomes.commands == 5_000
        assert outcomes.missing == [] and outcomes.duplicated == []
