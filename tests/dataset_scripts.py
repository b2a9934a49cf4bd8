"""Run a dataset builder as a script, the way users do, from a checkout that may not be installed."""
import os
import subprocess
import sys

from conftest import REPO_ROOT


def run_builder_script(script, *args, cwd=REPO_ROOT, env_updates=None):
    """Run `dataset/<script>` with `args`; returns the finished process (text output captured).

    The repository root goes on PYTHONPATH, as `pip install -e .` would make `dataset` importable.
    HRM_ARC_DATA is dropped unless `env_updates` sets it, so the caller's environment cannot steer a test.
    """
    env = {key: value for key, value in os.environ.items() if key != "HRM_ARC_DATA"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO_ROOT, os.environ.get("PYTHONPATH")]))
    env.update(env_updates or {})
    return subprocess.run([sys.executable, os.path.join(REPO_ROOT, "dataset", script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)
