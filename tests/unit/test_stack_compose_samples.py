"""Compose to a StackSpec (#14, ADR 48) from real files: the published samples in
tests/fixtures/compose map whole or name what is not supported."""

from __future__ import annotations

from pathlib import Path

from warren.model import RestartCondition, RestartPolicy
from warren.stack.load import load_stack
from warren.stack.spec import Dependency, DependencyCondition, StackSpec

SAMPLES = Path(__file__).resolve().parent.parent / "fixtures" / "compose"


def findings(stack: StackSpec) -> list[str]:
    return [f"{f.path}@{f.line}" for f in stack.unsupported]


def test_the_voting_app_stack_file_maps_whole() -> None:
    stack = load_stack([SAMPLES / "voting-stack" / "docker-stack.yml"], "vote", {})
    assert findings(stack) == []
    services = {s.spec.name: s for s in stack.services}
    assert set(services) == {f"vote_{n}" for n in ("redis", "db", "vote", "result", "worker", "visualizer")}
    assert services["vote_vote"].spec.replicas == 2
    assert services["vote_worker"].spec.restart == RestartPolicy(RestartCondition.ON_FAILURE, 10, 3, 120)
    assert services["vote_visualizer"].spec.stop_grace_period == 90
    assert sorted(n.name for n in stack.networks) == ["vote_backend", "vote_default", "vote_frontend"]


def test_the_voting_app_compose_file_names_what_is_not_supported() -> None:
    stack = load_stack([SAMPLES / "voting-compose" / "compose.yaml"], "vote", {})
    assert findings(stack) == [
        "services.vote.build@4",
        "services.result.build@27",
        "services.result.ports[1].host_ip@38",
        "services.worker.build@44",
        "services.seed.build@83",
        "services.seed.profiles@86",
    ]
    services = {s.spec.name: s for s in stack.services}
    assert services["vote_worker"].depends_on == (
        Dependency("vote_redis", DependencyCondition.HEALTHY),
        Dependency("vote_db", DependencyCondition.HEALTHY),
    )
    redis = services["vote_redis"].spec
    assert redis.health is not None and redis.health.command == ("/bin/sh", "-c", "/healthchecks/redis.sh")
    assert redis.mounts[0].source == str(SAMPLES / "voting-compose" / "healthchecks")


def test_the_three_tier_sample_maps_its_secret_and_escaped_health_check() -> None:
    stack = load_stack([SAMPLES / "nginx-flask-mysql" / "compose.yaml"], "app", {})
    assert findings(stack) == ["services.backend.build@3", "services.db.expose@36"]
    assert [(s.name, s.data) for s in stack.secrets] == [("app_db-password", b"db-78n9n")]
    db = next(s.spec for s in stack.services if s.spec.name == "app_db")
    assert db.health is not None
    assert db.health.command == ("/bin/sh", "-c", 'test -n "$(cat /run/secrets/db-password)"')
    assert db.args == ("--default-authentication-plugin=mysql_native_password",)
