"""The chaos soak of ``bench/chaos_soak.py``, shortened for CI: it must reconcile exactly."""

from __future__ import annotations

import pytest

from bench import chaos_soak


@pytest.mark.timeout(240)
def test_a_short_chaos_soak_reconciles_the_ledger_and_every_answer_exactly(capsys):
    code = chaos_soak.run(seconds=45, seed=7, clients=6)
    report = capsys.readouterr().out
    assert code == 0, report
    assert "reconciled: every check passed" in report
