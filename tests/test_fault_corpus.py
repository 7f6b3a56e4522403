"""The diagnosis corpus (scripts/fault_corpus.py, docs/diagnosis.md): faults made with ordinary config keys are
flagged within 5 steps of onset with a fix that makes the run healthy, and healthy runs raise no alert.

The default suite runs the CI slice (one learning-rate fault, one loss-scale fault, a healthy run); `make torture`
runs every fault and the healthy rates and precisions at one seed; the whole matrix (three seeds, 300 steps) is
the script's default, the command behind the published table.
"""

import importlib.util
import sys

import pytest

from helpers import ROOT
from test_monitor_support import FULL


def corpus():
    spec = importlib.util.spec_from_file_location("fault_corpus", ROOT / "scripts" / "fault_corpus.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["fault_corpus"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def run_slice(name: str, tmp_path) -> None:
    module = corpus()
    outcomes = [module.run_case(case, tmp_path) for case in module.SLICES[name]()]
    failed = [(o.case.name, o.onset, o.alert_step, o.kind, o.suggestion, o.fix, o.fixed_detail, o.alerts)
              for o in outcomes if not o.passed]
    assert not failed, "\n" + module.table(outcomes)
    assert any(o.case.fault for o in outcomes) and any(not o.case.fault for o in outcomes)


def test_the_ci_slice_of_the_corpus(tmp_path):
    run_slice("ci", tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(not FULL, reason="runs under `make torture` (LORATUI_TORTURE=full)")
def test_the_corpus_faults_and_healthy_rates(tmp_path):
    run_slice("torture", tmp_path)
