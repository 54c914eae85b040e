"""The read planner: few requests, within every device limit, gaps only where readable."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devices import Point, Profile, RegisterType
from edge.plan import PlanError, compile_plan
from edge.profiles import get_profile, modbus_profiles
from protocols.modbus import DataType, register_count


def test_plan__sdm630_uses_far_fewer_requests_than_points():
    profile = get_profile("eastron_sdm630")
    plan = compile_plan(profile)
    assert plan.point_count == len(profile.points) == 56
    assert len(plan.requests) <= 6
    assert len(plan.requests) * 8 < plan.point_count
    # The block the reference suggests: 0x0000 x 80 in one request.
    assert (plan.requests[0].address, plan.requests[0].count) == (0, 80)


@pytest.mark.parametrize("name", sorted(modbus_profiles()))
def test_plan__every_profile_respects_its_limits(name):
    profile = get_profile(name)
    plan = compile_plan(profile)
    covered = [p.name for r in plan.requests for p in r.points]
    assert sorted(covered) == sorted(profile.point_names)
    for r in plan.requests:
        assert 1 <= r.count <= profile.max_registers_per_request
        if profile.even_register_count:
            assert r.count % 2 == 0


def test_plan__sdm120_never_reads_through_an_unmapped_gap():
    profile = get_profile("eastron_sdm120")
    mapped = {a for p in profile.points for a in range(p.address, p.end)}
    for r in compile_plan(profile).requests:
        assert set(range(r.address, r.address + r.count)) <= mapped


def test_plan__configured_limit_splits_requests():
    plan = compile_plan(get_profile("eastron_sdm630"), max_registers=20)
    assert all(r.count <= 20 for r in plan.requests)
    assert plan.point_count == 56


def test_plan__unknown_point_is_refused():
    with pytest.raises(PlanError, match="no point"):
        compile_plan(get_profile("eastron_sdm630"), ["voltage_l9"])


@st.composite
def random_profiles(draw):
    n = draw(st.integers(1, 30))
    addr = draw(st.integers(0, 50))
    points = []
    for i in range(n):
        dtype = draw(st.sampled_from([DataType.UINT16, DataType.FLOAT32, DataType.UINT64]))
        points.append(Point(f"p{i}", addr, dtype))
        addr += register_count(dtype) + draw(st.integers(0, 12))
    lo = draw(st.integers(0, addr))
    hi = draw(st.integers(lo, addr + 10))
    return Profile(
        name="random",
        vendor="t",
        model="t",
        points=tuple(points),
        max_registers_per_request=draw(st.integers(4, 125)),
        readable_ranges={RegisterType.INPUT: ((lo, hi),)},
    )


@given(random_profiles(), st.integers(0, 125))
def test_plan__random_maps_cover_every_point_once_within_limits(profile, max_gap):
    plan = compile_plan(profile, max_gap_registers=max_gap)
    seen = [p.name for r in plan.requests for p in r.points]
    assert sorted(seen) == sorted(profile.point_names)
    mapped = {a for p in profile.points for a in range(p.address, p.end)}
    for r in plan.requests:
        assert r.count <= profile.max_registers_per_request
        for p in r.points:
            assert r.address <= p.address and p.end <= r.address + r.count
        for a in range(r.address, r.address + r.count):
            assert a in mapped or profile.readable(RegisterType.INPUT, a, a + 1)
