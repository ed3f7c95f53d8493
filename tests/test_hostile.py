"""The attacks and faults of issue 17 ("Trust under fire") and of the newer surfaces (item `new`: outputs, names,
search, keys, /metrics, uploads, /v1/realtime, overlay, text rules), one test per probe of bench/hostile.py: each starts the
app as users run it (and what else it needs: the upstream simulator's HOSTILE MODES, a real redis-server), attacks
it from outside over loopback, and asserts the attack was held. `python bench/hostile.py` prints the same table."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("bench_hostile", Path(__file__).resolve().parent.parent / "bench" / "hostile.py")
hostile = importlib.util.module_from_spec(_spec)
sys.modules["bench_hostile"] = hostile  # dataclasses look their module up there
_spec.loader.exec_module(hostile)


@pytest.mark.parametrize("probe", hostile.PROBES, ids=[p.name for p in hostile.PROBES])
def test_attack_is_held(probe):
    result = probe.check()
    assert result.held, f"item {probe.item}, {probe.name}: broken: {result.figure}"
