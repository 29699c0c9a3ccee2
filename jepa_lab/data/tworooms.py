"""Two-Rooms, generated: a batched torch simulator, its renderer and offline random-walk data.

After PLDM's Two-Rooms (Sobal et al. 2025) and stable-worldmodel's TwoRoom: two rooms side by
side, a vertical wall with one door, an agent that moves by a bounded 2-D displacement. Positions
are continuous, in pixel units (pixel i is centred on i), shape (B, 2) as (x, y) = (column, row).
Images are 2 channels: the agent as a Gaussian dot, the walls plus border. Everything is a pure
function of its inputs and a seeded generator, so a seed means the same data on every run.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from jepa_lab.data.seeds import derive_seed
from jepa_lab.spec.world import TrajectorySpec, TwoRoomsSpec

_EPS = 1e-3  # how far from a wall face a blocked move stops, in pixels


@dataclass(frozen=True)
class Geometry:
    """The free space of the agent's centre, in pixel units.

    The agent's centre keeps ``margin`` from every wall: the box is [lo, hi]^2; the wall band
    [wall_lo, wall_hi] in x may be entered only with y in the door [door_lo, door_hi]."""

    size: int
    lo: float
    hi: float
    wall_lo: float
    wall_hi: float
    door_lo: float
    door_hi: float
    wall_cols: tuple[int, int]  # first and last wall column
    door_rows: tuple[int, int]  # first and last open row of the wall


def geometry(spec: TwoRoomsSpec) -> Geometry:
    """The free space of ``spec``: 1-pixel border, wall in the middle, door centred in it."""
    # the centre keeps half a pixel from the wall, and 1.5 sigma from the border so the image
    # edge does not cut the dot (its centroid stays within 0.05 px of the position)
    size, margin, border = spec.image_size, 0.5, max(0.5, 1.5 * spec.dot_sigma)
    c0 = size // 2 - spec.wall_width // 2
    c1 = c0 + spec.wall_width - 1
    d0 = size // 2 - spec.door_size // 2
    d1 = d0 + spec.door_size - 1
    return Geometry(
        size=size,
        lo=0.5 + border,
        hi=size - 1.5 - border,
        wall_lo=c0 - 0.5 - margin,
        wall_hi=c1 + 0.5 + margin,
        door_lo=d0 - 0.5 + margin,
        door_hi=d1 + 0.5 - margin,
        wall_cols=(c0, c1),
        door_rows=(d0, d1),
    )


def clip_actions(actions: torch.Tensor, max_step: float) -> torch.Tensor:
    """Actions (..., 2) scaled down to norm at most ``max_step`` (direction kept)."""
    norm = actions.norm(dim=-1, keepdim=True)
    return actions * (max_step / norm.clamp_min(max_step))


def room_of(pos: torch.Tensor, geo: Geometry) -> torch.Tensor:
    """(B,) room index: 0 left of the wall's centre line, 1 right of it."""
    return (pos[..., 0] > (geo.wall_lo + geo.wall_hi) / 2).long()


def _band_span(p: torch.Tensor, q: torch.Tensor, geo: Geometry) -> tuple[torch.Tensor, ...]:
    """Parameters t_in <= t_out in [0, 1] of the part of segment p->q inside the wall band, and
    whether that part is non-empty."""
    dx = q[:, 0] - p[:, 0]
    safe = torch.where(dx.abs() < 1e-12, torch.full_like(dx, 1e-12), dx)
    t_a = (geo.wall_lo - p[:, 0]) / safe
    t_b = (geo.wall_hi - p[:, 0]) / safe
    t_in = torch.minimum(t_a, t_b).clamp(0, 1)
    t_out = torch.maximum(t_a, t_b).clamp(0, 1)
    vertical = dx.abs() < 1e-12
    inside_p = (p[:, 0] > geo.wall_lo) & (p[:, 0] < geo.wall_hi)  # a face is outside
    t_in = torch.where(vertical, torch.zeros_like(t_in), t_in)
    t_out = torch.where(vertical, torch.ones_like(t_out), t_out)
    hits = torch.where(vertical, inside_p, t_in < t_out) | inside_p
    return t_in, t_out, hits


def segment_valid(p: torch.Tensor, q: torch.Tensor, geo: Geometry) -> torch.Tensor:
    """(B,) whether every point of segment p->q is free: inside the box, and inside the door
    wherever it is inside the wall band (the door is convex, so checking where the segment enters
    and leaves the band suffices)."""
    in_box = ((q >= geo.lo - 1e-6) & (q <= geo.hi + 1e-6)).all(-1)
    t_in, t_out, hits = _band_span(p, q, geo)
    y_in = p[:, 1] + t_in * (q[:, 1] - p[:, 1])
    y_out = p[:, 1] + t_out * (q[:, 1] - p[:, 1])
    in_door = ((torch.stack([y_in, y_out], -1) >= geo.door_lo - 1e-6)
               & (torch.stack([y_in, y_out], -1) <= geo.door_hi + 1e-6)).all(-1)  # fmt: skip
    return in_box & (~hits | in_door)


def step(pos: torch.Tensor, actions: torch.Tensor, spec: TwoRoomsSpec) -> torch.Tensor:
    """Next positions (B, 2) after displacements ``actions`` (B, 2), clipped to ``max_step``.

    A move is clamped to the box; a move whose segment meets the wall outside the door stops at
    the wall face it reaches first (or, from inside the door, slides to the door's edge)."""
    geo = geometry(spec)
    act = clip_actions(actions, spec.max_step)
    q = (pos + act).clamp(geo.lo, geo.hi)
    if torch.all(segment_valid(pos, q, geo)):
        return q
    t_in, _, _ = _band_span(pos, q, geo)
    inside = (pos[:, 0] > geo.wall_lo) & (pos[:, 0] < geo.wall_hi)
    # from outside: stop at the face reached first, backed off a little
    from_left = pos[:, 0] <= (geo.wall_lo + geo.wall_hi) / 2
    face = torch.where(from_left, geo.wall_lo - _EPS, geo.wall_hi + _EPS)
    y_hit = pos[:, 1] + t_in * (q[:, 1] - pos[:, 1])
    stopped = torch.stack([face, y_hit], -1)
    # from inside the door: keep x, clamp y to the door
    slid = torch.stack([q[:, 0], q[:, 1].clamp(geo.door_lo, geo.door_hi)], -1)
    fixed = torch.where(inside.unsqueeze(-1), slid, stopped)
    return torch.where(segment_valid(pos, q, geo).unsqueeze(-1), q, fixed)


def walls(spec: TwoRoomsSpec) -> torch.Tensor:
    """(S, S) float image of the border and the wall with its door (1 = wall)."""
    geo = geometry(spec)
    image = torch.zeros(geo.size, geo.size)
    image[0, :] = image[-1, :] = image[:, 0] = image[:, -1] = 1
    c0, c1 = geo.wall_cols
    d0, d1 = geo.door_rows
    image[:, c0 : c1 + 1] = 1
    image[d0 : d1 + 1, c0 : c1 + 1] = 0
    return image


def _dot(pos: torch.Tensor, spec: TwoRoomsSpec) -> torch.Tensor:
    """(B, S, S) Gaussian dots of positions (B, 2), rows indexed by y, columns by x."""
    grid = torch.arange(spec.image_size, device=pos.device, dtype=torch.float32)
    gx = torch.exp(-0.5 * ((grid - pos[:, 0:1].float()) / spec.dot_sigma).square())  # (B, S)
    gy = torch.exp(-0.5 * ((grid - pos[:, 1:2].float()) / spec.dot_sigma).square())
    return gy.unsqueeze(-1) * gx.unsqueeze(-2)


def render(pos: torch.Tensor, spec: TwoRoomsSpec) -> torch.Tensor:
    """Float images (B, 2, S, S) in [0, 1] of positions (B, 2): a Gaussian dot, the walls."""
    dot = _dot(pos, spec)
    return torch.stack([dot, walls(spec).to(pos.device).expand_as(dot)], 1)


def render_uint8(pos: torch.Tensor, spec: TwoRoomsSpec, chunk: int = 2048) -> torch.Tensor:
    """(B, 2, S, S) uint8 images: what the data keeps in memory (rendered in chunks)."""
    size = spec.image_size
    out = torch.empty(pos.shape[0], 2, size, size, dtype=torch.uint8, device=pos.device)
    out[:, 1] = (walls(spec) * 255).to(torch.uint8).to(pos.device)
    for start in range(0, pos.shape[0], chunk):
        dot = _dot(pos[start : start + chunk], spec).mul_(255).round_()
        out[start : start + chunk, 0] = dot.to(torch.uint8)
    return out


def sample_positions(
    n: int, spec: TwoRoomsSpec, generator: torch.Generator, room: torch.Tensor | None = None
) -> torch.Tensor:
    """(n, 2) uniform free positions, in ``room`` (n,) (0 left, 1 right) or either room."""
    geo = geometry(spec)
    u = torch.rand(n, 2, generator=generator)
    y = geo.lo + u[:, 1] * (geo.hi - geo.lo)
    if room is None:
        room = (torch.rand(n, generator=generator) < 0.5).long()
    left = geo.lo + u[:, 0] * (geo.wall_lo - _EPS - geo.lo)
    right = geo.wall_hi + _EPS + u[:, 0] * (geo.hi - geo.wall_hi - _EPS)
    x = torch.where(room.bool(), right, left)
    return torch.stack([x, y], -1)


def door_starts(
    n: int, length: int, spec: TwoRoomsSpec, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions (n, 2) in front of the door, on either side, and headings (n,) through it.

    y is uniform over the door; the distance from the wall face is uniform up to a quarter of
    the walk's longest path (so most cross in its first half); the heading is within 30 degrees
    of straight through, toward the other room."""
    geo = geometry(spec)
    u = torch.rand(n, 4, generator=generator)
    right = u[:, 0] < 0.5
    room = min(geo.wall_lo - geo.lo, geo.hi - geo.wall_hi) - _EPS
    distance = u[:, 1] * min(room, 0.25 * (length - 1) * spec.max_step)
    x = torch.where(right, geo.wall_hi + _EPS + distance, geo.wall_lo - _EPS - distance)
    y = geo.door_lo + u[:, 2] * (geo.door_hi - geo.door_lo)
    through = torch.where(right, torch.pi, 0.0)
    return torch.stack([x, y], -1), through + (2 * u[:, 3] - 1) * torch.pi / 6


@dataclass(frozen=True)
class Trajectories:
    """Offline data: uint8 frames (N, T, 2, S, S), positions (N, T, 2), actions (N, T-1, 2)."""

    frames: torch.Tensor
    positions: torch.Tensor
    actions: torch.Tensor

    def _room_changes(self, spec: TwoRoomsSpec) -> torch.Tensor:
        """(N, T-1) whether each transition changes room."""
        rooms = room_of(self.positions, geometry(spec))
        return rooms[:, 1:] != rooms[:, :-1]

    def crossing_share(self, spec: TwoRoomsSpec) -> float:
        """Share of transitions that change room: cross-room planning needs some."""
        return float(self._room_changes(spec).float().mean())

    def crossing_trajectory_share(self, spec: TwoRoomsSpec) -> float:
        """Share of trajectories that change room at least once."""
        return float(self._room_changes(spec).any(1).float().mean())

    def digest(self) -> str:
        """SHA-256 of the positions and actions (the frames are a function of the positions and
        the environment spec, which every result records)."""
        sha = hashlib.sha256()
        for tensor in (self.positions, self.actions):
            sha.update(tensor.contiguous().numpy().tobytes())
        return sha.hexdigest()


def random_walk(
    n: int, length: int, spec: TwoRoomsSpec, data: TrajectorySpec, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions (n, length, 2) and actions (n, length - 1, 2) of heading-persistent walks.

    The heading turns by N(0, data.turn_std) each step; the step length is uniform in
    [0.5, 1] * max_step. Starts are uniform over both rooms, except for a ``data.door_share``
    of the walks, which start in front of the door heading through it (:func:`door_starts`).
    Doors are found by walks that keep their heading, which is why the heading persists. The
    door starts come from a generator of their own, so the share changes only those walks'
    starts: every other number of the walks is the same at every share."""
    generator = torch.Generator().manual_seed(seed)
    pos = sample_positions(n, spec, generator)
    heading = torch.rand(n, generator=generator) * 2 * torch.pi
    door = torch.Generator().manual_seed(derive_seed("door", seed))
    chosen = torch.randperm(n, generator=door)[: round(data.door_share * n)]
    pos[chosen], heading[chosen] = door_starts(len(chosen), length, spec, door)
    positions, actions = [pos], []
    for _ in range(length - 1):
        heading = heading + data.turn_std * torch.randn(n, generator=generator)
        size = spec.max_step * (0.5 + 0.5 * torch.rand(n, generator=generator))
        act = torch.stack([heading.cos(), heading.sin()], -1) * size.unsqueeze(-1)
        pos = step(pos, act, spec)
        positions.append(pos)
        actions.append(act)
    return torch.stack(positions, 1), torch.stack(actions, 1)


def generate(
    spec: TwoRoomsSpec, data: TrajectorySpec, n: int, length: int, seed: int, stream: str
) -> Trajectories:
    """``n`` rendered trajectories of ``length`` frames; ``stream`` names disjoint seed streams
    (train, eval, bank, ...), so evaluation never sees a training or bank trajectory's seed."""
    positions, actions = random_walk(n, length, spec, data, derive_seed("tworooms", stream, seed))
    size = spec.image_size
    frames = render_uint8(positions.reshape(-1, 2), spec).reshape(n, length, 2, size, size)
    return Trajectories(frames, positions, actions)
