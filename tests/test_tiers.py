"""The tiers themselves (tests/tiers.py): a test's tier follows from what its source uses, the guard sees every
process a fast test starts, and the fast tier is at least half of the suite."""
import subprocess
import textwrap

import pytest
import tiers


def test_what_a_test_uses_decides_its_tier(tmp_path):
    module = tmp_path / "test_sample.py"
    module.write_text(textwrap.dedent('''
        def _helper():
            return run_cli("toy")

        def _indirect():
            return _helper()

        def test_pure():
            assert 1 + 1 == 2

        def test_through_helpers():
            _indirect()

        def test_compiles():
            torch.compile(lambda x: x)

        def test_with_a_server(cifar_sweep):
            pass
    '''))
    slow = tiers.starters(module)
    assert {"_helper", "_indirect", "run_cli", "cifar_sweep"} <= slow
    refs = tiers._functions(module)
    assert not refs["test_pure"] & slow
    assert refs["test_through_helpers"] & slow and refs["test_compiles"] & slow and refs["test_with_a_server"] & slow


def test_the_guard_sees_every_process_it_should():
    with tiers.Tripwire() as wire:
        subprocess.run(["true"], check=True)
        subprocess.run(["git", "--version"], capture_output=True, check=True)  # MLflow's, not the test's
    assert wire.started == ["true"]
    assert "mark it @pytest.mark.slow" in tiers.guard_message(type("Item", (), {"nodeid": "t::x"})(), wire.started)


def test_the_fast_tier_is_at_least_half_of_the_suite():
    if tiers.COLLECTED.get("all", 0) < 500:
        pytest.skip("only a collection of the whole suite says")
    assert tiers.COLLECTED["fast"] >= tiers.COLLECTED["all"] / 2, tiers.COLLECTED

