"""Issue 7 item 2: ``--json``, ``--token`` and ``--api-url`` after any command (SPEC)."""

from __future__ import annotations

import json
from pathlib import Path

import click
from support.cli import slipway
from support.server import Server

from controller.cli import main

GLOBAL = {"--json", "--token", "--api-url"}


def _commands(group: click.Group, path: str = "slipway") -> list[tuple[str, click.Command]]:
    found: list[tuple[str, click.Command]] = []
    for name, command in group.commands.items():
        found.append((f"{path} {name}", command))
        if isinstance(command, click.Group):
            found += _commands(command, f"{path} {name}")
    return found


def test_every_command_and_group_declares_the_global_options() -> None:
    commands = _commands(main)
    assert len(commands) > 20
    for name, command in commands:
        options = {opt for param in command.params for opt in param.opts}
        assert options >= GLOBAL, f"{name} lacks {sorted(GLOBAL - options)}"


def _bare_env(server: Server, tmp_path: Path) -> dict[str, str]:
    """No API URL and no token from the environment: only the options can supply them."""
    env = {k: v for k, v in server.env.items() if k not in ("SLIPWAY_API_URL",)}
    env["SLIPWAY_DATA_DIR"] = str(tmp_path / "elsewhere")
    return env


def test_options_after_a_leaf_command_reach_the_server(server: Server, tmp_path: Path) -> None:
    env = _bare_env(server, tmp_path)
    created = slipway(
        *("projects", "create", "shop", "--repo", "acme/shop"),
        *("--json", "--api-url", server.url, "--token", server.token),
        env=env,
    )
    assert json.loads(created.stdout)["ref"] == "shop"

    listed = slipway(
        "projects", "list", "--json", "--api-url", server.url, "--token", server.token, env=env
    )
    assert [p["ref"] for p in json.loads(listed.stdout)] == ["shop"]

    events = slipway(
        "events",
        "--project",
        "shop",
        "--token",
        server.token,
        "--json",
        "--api-url",
        server.url,
        env=env,
    )
    assert isinstance(json.loads(events.stdout), list)


def test_an_option_after_the_command_wins_over_the_same_before_it(
    server: Server, tmp_path: Path
) -> None:
    env = _bare_env(server, tmp_path)
    good = ("--api-url", server.url, "--token", server.token)
    listed = slipway(
        *("--api-url", "http://127.0.0.1:9", "--token", "wrong"),
        "projects",
        "list",
        *good,
        "--json",
        env=env,
    )
    assert json.loads(listed.stdout) == []

    refused = slipway(*good, "projects", "list", "--token", "wrong", env=env, check=False)
    assert refused.returncode == 1
    assert "[HTTP 401]" in refused.stderr
    assert "wrong" not in refused.stderr


def test_options_after_a_group_and_after_a_nested_command(server: Server, tmp_path: Path) -> None:
    env = _bare_env(server, tmp_path)
    slipway(
        "projects",
        "create",
        "shop",
        "--repo",
        "acme/shop",
        "--api-url",
        server.url,
        "--token",
        server.token,
        env=env,
    )
    nested = slipway(
        *("environments", "list", "--project", "shop", "--json"),
        *("--api-url", server.url, "--token", server.token),
        env=env,
    )
    assert sorted(e["name"] for e in json.loads(nested.stdout)) == [
        "preview",
        "production",
        "staging",
    ]
    grouped = slipway(
        "projects",
        "--json",
        "--api-url",
        server.url,
        "--token",
        server.token,
        "show",
        "shop",
        env=env,
    )
    assert json.loads(grouped.stdout)["ref"] == "shop"
