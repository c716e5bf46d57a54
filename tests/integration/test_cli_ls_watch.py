"""``rx-discovery ls --watch``: the live catalog (issue 12), in a real process on a real etcd."""

from __future__ import annotations

import json

from test_cli import SECRET, Cli, discovery, env, run_cli  # noqa: F401  (fixtures)

from rx_discovery import Discovery, Host


def _hosts(listing: dict[str, object]) -> dict[str, list[str]]:
    return {service["name"]: [host["uuid"] for host in service["hosts"]]  # type: ignore[index]
            for service in listing["services"]}  # type: ignore[attr-defined]


def test_ls_watch_json_prints_the_catalog_then_each_change(
        env: dict[str, str], discovery: Discovery, unique_prefix: str) -> None:  # noqa: F811
    api = discovery.register("api", Host("api-1", ports={"http": "80"}, user="u",
                                         password=SECRET)).wait(10)
    watch = Cli("ls", "--watch", "--json", "--prefix", unique_prefix, env=env)
    try:
        first = json.loads(watch.expect(lambda line: '"services"' in line, 15, "a catalog"))
        assert _hosts(first) == {"api": [api.uuid]}
        db = discovery.register("db", Host("db-1", ports={"pg": "5432"})).wait(10)
        api.dispose()
        last = json.loads(watch.expect(
            lambda line: _hosts(json.loads(line)) == {"api": [], "db": [db.uuid]}, 15,
            "the catalog after db came and api-1 went"))
        assert last["revision"] > first["revision"]
        assert last["prefix"] == unique_prefix
    finally:
        watch.kill()
    assert SECRET not in "\n".join(watch.stdout) + watch.stderr


def test_ls_watch_ends_after_duration(env: dict[str, str], discovery: Discovery,  # noqa: F811
                                      unique_prefix: str) -> None:
    discovery.register("web", Host("web-1", ports={"http": "81"})).wait(10)
    result = run_cli("ls", "web", "--watch", "--duration", "1", "--prefix", unique_prefix,
                     env=env)
    assert result.returncode == 0, result.stderr
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert rows[0][:3] == ["service", "uuid", "hostname"]
    assert [row[0] for row in rows[1:]] == ["web"]
