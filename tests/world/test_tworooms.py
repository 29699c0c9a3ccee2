"""The Two-Rooms simulator, renderer, data and Gymnasium environment."""

from __future__ import annotations

import gymnasium
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from jepa_lab.data import tworooms as tr
from jepa_lab.spec.world import TrajectorySpec, TwoRoomsSpec

SPEC = TwoRoomsSpec()


def test_generation_is_deterministic_per_seed() -> None:
    a = tr.generate(SPEC, TrajectorySpec(), 64, 9, seed=3, stream="train")
    b = tr.generate(SPEC, TrajectorySpec(), 64, 9, seed=3, stream="train")
    c = tr.generate(SPEC, TrajectorySpec(), 64, 9, seed=4, stream="train")
    assert torch.equal(a.frames, b.frames) and torch.equal(a.positions, b.positions)
    assert not torch.equal(a.positions, c.positions)


@pytest.mark.parametrize("size", [32, 64])
def test_never_crosses_the_wall_outside_the_door(size: int) -> None:
    spec = TwoRoomsSpec(image_size=size, door_size=size // 4, max_step=size / 16)
    geo = tr.geometry(spec)
    generator = torch.Generator().manual_seed(0)
    pos = tr.sample_positions(4096, spec, generator)
    crossed = torch.zeros(4096, dtype=torch.bool)
    for _ in range(60):
        act = torch.randn(4096, 2, generator=generator) * spec.max_step
        new = tr.step(pos, act, spec)
        assert tr.segment_valid(pos, new, geo).all()
        assert ((new - pos).norm(dim=-1) <= spec.max_step + 1e-5).all()
        crossed |= tr.room_of(new, geo) != tr.room_of(pos, geo)
        pos = new
    assert crossed.any()


def test_passes_through_the_door_and_stops_at_the_wall() -> None:
    geo = tr.geometry(SPEC)
    mid = (geo.door_lo + geo.door_hi) / 2
    pos = torch.tensor([[geo.wall_lo - 0.5, mid]])
    for _ in range(8):  # straight through the door
        pos = tr.step(pos, torch.tensor([[SPEC.max_step, 0.0]]), SPEC)
    assert tr.room_of(pos, geo).item() == 1
    blocked = torch.tensor([[geo.wall_lo - 0.5, geo.lo + 1]])
    for _ in range(8):  # into the wall away from the door
        blocked = tr.step(blocked, torch.tensor([[SPEC.max_step, 0.0]]), SPEC)
    assert blocked[0, 0] < geo.wall_lo and tr.room_of(blocked, geo).item() == 0


def test_the_default_data_crosses_the_door() -> None:
    """Uniform starts alone cross in ~0.5 % of transitions (~7 % of walks); the default door
    share gives ~2.6 % (~38 % of walks), measured on seeds 0-2 at 4000 walks."""
    n, length = 1000, 17
    default = tr.generate(SPEC, TrajectorySpec(), n, length, seed=0, stream="train")
    uniform = tr.generate(SPEC, TrajectorySpec(door_share=0), n, length, seed=0, stream="train")
    assert default.crossing_share(SPEC) >= 0.02
    assert default.crossing_trajectory_share(SPEC) >= 0.3
    assert uniform.crossing_share(SPEC) < 0.01
    # the share moves only the chosen walks' starts: the other walks are the same numbers
    same = (default.positions == uniform.positions).all(-1).all(-1)
    assert int(same.sum()) == n - round(TrajectorySpec().door_share * n)
    geo = tr.geometry(SPEC)
    starts = default.positions[~same, 0]
    assert tr.segment_valid(starts, starts, geo).all()
    assert ((starts[:, 1] >= geo.door_lo) & (starts[:, 1] <= geo.door_hi)).all()


@pytest.mark.parametrize("size", [32, 64])
def test_rendered_dot_centroid_is_the_position(size: int) -> None:
    spec = TwoRoomsSpec(image_size=size, dot_sigma=size / 32)
    pos = tr.sample_positions(256, spec, torch.Generator().manual_seed(1))
    dot = tr.render(pos, spec)[:, 0]
    grid = torch.arange(size, dtype=torch.float32)
    mass = dot.sum((1, 2))
    cx = (dot.sum(1) * grid).sum(-1) / mass
    cy = (dot.sum(2) * grid).sum(-1) / mass
    error = (torch.stack([cx, cy], -1) - pos).norm(dim=-1)
    assert error.max() < 0.5
    assert tr.render_uint8(pos[:4], spec).dtype == torch.uint8


def test_replaying_stored_actions_reproduces_positions() -> None:
    data = tr.generate(SPEC, TrajectorySpec(), 128, 17, seed=0, stream="train")
    pos = data.positions[:, 0]
    for t in range(16):
        pos = tr.step(pos, data.actions[:, t], SPEC)
        torch.testing.assert_close(pos, data.positions[:, t + 1])
    assert 0 <= data.crossing_share(SPEC) <= 1


def test_gymnasium_env_passes_check_env() -> None:
    import jepa_lab.data.gym_env  # noqa: F401  (registers the id)

    env = gymnasium.make("jepa_lab/TwoRooms-v0")
    check_env(env.unwrapped)
    obs, info = env.reset(seed=5, options={"room": 0, "goal_room": 1})
    assert obs.shape == (2, 32, 32) and info["position"][0] < 16
    obs2, _ = env.reset(seed=5, options={"room": 0, "goal_room": 1})
    assert (obs == obs2).all()
    obs, reward, _, truncated, info = env.step(env.action_space.sample())
    assert reward <= 0 and not truncated
