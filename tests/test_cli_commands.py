"""The command line loads each command's module on first use: the list of which module
registers which command must match what the modules register."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import fusesnap.cli
from fusesnap.cli.app import COMMAND_MODULES, cli


def test_every_command_is_listed_with_its_module() -> None:
    registered: dict[str, str] = {}
    for info in pkgutil.iter_modules(fusesnap.cli.__path__):
        if info.name in ("app", "__main__"):
            continue
        module = importlib.import_module(f"fusesnap.cli.{info.name}")
        for name, command in cli.commands.items():
            callback = command.callback
            if callback is not None and callback.__module__ == module.__name__:
                registered[name] = info.name
    assert registered == COMMAND_MODULES


def test_a_command_module_loads_when_the_command_is_used() -> None:
    code = """
import sys
from fusesnap.cli.app import cli
assert "fusesnap.cli.snapshots" not in sys.modules
assert "fusesnap.snapshots.commit" not in sys.modules
ctx = cli.make_context("fusesnap", ["commit", "--help"], resilient_parsing=True)
command = cli.get_command(ctx, "commit")
assert command is not None and command.name == "commit"
assert "fusesnap.cli.snapshots" in sys.modules
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.stdout == "ok\n", proc.stderr


def test_only_the_snapshotter_command_loads_grpc() -> None:
    # grpc's imports cost ~0.1 s, which every other command would pay at start.
    code = """
import sys
from fusesnap.cli.app import COMMAND_MODULES, cli
for name in sorted(set(COMMAND_MODULES) - {"snapshotter"}):
    ctx = cli.make_context("fusesnap", [name, "--help"], resilient_parsing=True)
    assert cli.get_command(ctx, name) is not None, name
    assert "grpc" not in sys.modules, name
import fusesnap.containerd
assert "grpc" not in sys.modules
fusesnap.containerd.serve
assert "grpc" in sys.modules
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.stdout == "ok\n", proc.stderr
