"""deploy/prometheus passes promtool's checks: the rules and the scrape configurations are valid,
and every alert passes its unit tests (alerts_test.yml).

promtool is an outside tool: without it these fail, saying how to install it (never skip). What
needs no tool (the metrics the rules use, the configurations' contents) is tests/unit/test_alert_rules.py.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.unit.test_alert_rules import CONFIGS, DIR

INSTALL = "apt-get install prometheus (Debian/Ubuntu; it gives /usr/bin/promtool)"


def promtool(*args: str) -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(f"promtool is not installed; install it with: {INSTALL}", pytrace=False)
    done = subprocess.run([path, *args], cwd=DIR, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"promtool {' '.join(args)} failed:\n{done.stdout}{done.stderr}"
    return done.stdout


def test_the_rules_are_valid():
    assert "SUCCESS" in promtool("check", "rules", "alerts.yml")


def test_every_alert_passes_its_unit_tests():
    assert "SUCCESS" in promtool("test", "rules", "alerts_test.yml")


@pytest.mark.parametrize("config", CONFIGS)
def test_the_scrape_configs_are_valid(config):
    promtool("check", "config", config)
