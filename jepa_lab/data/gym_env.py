"""Two-Rooms as a Gymnasium environment, for other RL and planning code.

Importing this module registers ``jepa_lab/TwoRooms-v0``::

    import gymnasium
    import jepa_lab.data.gym_env  # noqa: F401  (registers the id)
    env = gymnasium.make("jepa_lab/TwoRooms-v0", image_size=64)

or, without the import, ``gymnasium.make("jepa_lab.data.gym_env:jepa_lab/TwoRooms-v0")``.
The dynamics and rendering are those of the batched simulator (:mod:`jepa_lab.data.tworooms`)
with a batch of one.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
import torch
from gymnasium import spaces

from jepa_lab.data import tworooms
from jepa_lab.spec.world import TwoRoomsSpec

ENV_ID = "jepa_lab/TwoRooms-v0"


class TwoRoomsEnv(gymnasium.Env[np.ndarray, np.ndarray]):
    """Observation: uint8 image (2, S, S). Action: a displacement (2,) in pixels, scaled down to
    ``max_step``. Reward: minus the distance to the goal; terminated within ``success_radius``.
    ``options={"room": 0|1, "goal_room": 0|1}`` fixes the rooms of the start and goal."""

    metadata = {  # noqa: RUF012  (gymnasium declares it an instance variable)
        "render_modes": ["rgb_array"],
        "render_fps": 10,
    }

    def __init__(self, render_mode: str | None = None, **settings: Any) -> None:
        self.spec_ = TwoRoomsSpec.model_validate(settings)
        size = self.spec_.image_size
        self.observation_space = spaces.Box(0, 255, (2, size, size), np.uint8)
        bound = np.float32(self.spec_.max_step)
        self.action_space = spaces.Box(-bound, bound, (2,), np.float32)
        self.render_mode = render_mode
        self._pos = torch.zeros(1, 2)
        self._goal = torch.zeros(1, 2)

    def _obs(self) -> np.ndarray:
        return tworooms.render_uint8(self._pos, self.spec_)[0].numpy()

    def _info(self) -> dict[str, Any]:
        return {
            "position": self._pos[0].numpy().astype(np.float64),
            "goal": self._goal[0].numpy().astype(np.float64),
            "distance": float((self._pos - self._goal).norm()),
        }

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        generator = torch.Generator().manual_seed(int(self.np_random.integers(2**62)))
        options = options or {}
        rooms = [options.get(k) for k in ("room", "goal_room")]  # gymnasium's options dict
        start, goal = (
            tworooms.sample_positions(
                1, self.spec_, generator, None if r is None else torch.tensor([int(r)])
            )
            for r in rooms
        )
        self._pos, self._goal = start, goal
        return self._obs(), self._info()

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        act = torch.as_tensor(np.asarray(action, dtype=np.float32)).reshape(1, 2)
        self._pos = tworooms.step(self._pos, act, self.spec_)
        distance = float((self._pos - self._goal).norm())
        terminated = distance <= self.spec_.success_radius
        return self._obs(), -distance, terminated, False, self._info()

    def render(self) -> np.ndarray:
        """(S, S, 3) uint8: the agent red, the walls grey."""
        image = self._obs()
        rgb = np.zeros((*image.shape[1:], 3), np.uint8)
        rgb[..., 0] = image[0]
        rgb[..., 1] = rgb[..., 2] = image[1] // 2
        return rgb


if ENV_ID not in gymnasium.registry:
    gymnasium.register(ENV_ID, entry_point=TwoRoomsEnv, max_episode_steps=64)
