"""Every program in examples/ runs against a broker and reports OK."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import ROOT

EXAMPLES = {
    "capability_routing.py": "-> translator.",
    "subagent_result.py": "parent: got {'task_id': 't-1', 'result': 10}",
    "task_queue.py": "duplicates 0, lost 0",
    "cloud_edge.py": "edge: critical {'cmd': 'stop_motor'}",
    "human_approval.py": "-> approved",
    "async_request_reply.py": "asker: answer",
}


def test_every_example_is_tested():
    present = {p.name for p in (ROOT / "examples").glob("*.py")}
    assert present == set(EXAMPLES)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example(name, shared_broker):
    env = dict(os.environ)
    env.pop("MQ9FAST_SERVER", None)
    p = subprocess.run([sys.executable, str(ROOT / "examples" / name), shared_broker.url], env=env,
                       capture_output=True, text=True, timeout=90, cwd=str(ROOT))
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.rstrip().endswith("OK"), p.stdout
    assert EXAMPLES[name] in p.stdout


def test_example_reads_server_from_env(shared_broker):
    env = dict(os.environ, MQ9FAST_SERVER=shared_broker.url)
    p = subprocess.run([sys.executable, str(ROOT / "examples" / "cloud_edge.py")], env=env,
                       capture_output=True, text=True, timeout=90)
    assert p.returncode == 0 and p.stdout.rstrip().endswith("OK"), p.stdout + p.stderr
