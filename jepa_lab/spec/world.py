"""World-model specs: an action-conditioned JEPA trained on generated Two-Rooms trajectories,
evaluated by 30-step rollouts (drift), corrections and CEM planning.

A world-model spec is told apart from an image experiment by its top-level ``kind: world_model``
(image specs have no ``kind``, so their digests are unchanged). The strategy is the same tagged
union as for images (:data:`jepa_lab.spec.experiment.StrategySpec`); of ``sigreg`` the world model
reads ``lambda``, ``directions``, ``knots`` and ``t_max`` (the statistic is taken over the batch at
each time step on the projector's output, then averaged over time, as LeWM does), and refuses the
image-only fields when they are set.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, model_validator

from jepa_lab.spec.base import FieldError, Spec
from jepa_lab.spec.experiment import OptimSpec, SigregSpec, StrategySpec


class TwoRoomsSpec(Spec):
    """The Two-Rooms task (after PLDM's: 65 px, a wall with a door, steps of at most 2.45 px).

    Positions are continuous, in pixel units (pixel i is centred on i). One-pixel border; a
    vertical wall in the middle with one door; a step is a displacement of bounded norm, and a
    move into the wall outside the door stops at the wall."""

    image_size: Literal[32, 64] = Field(32, description="Image side in pixels (32 or 64).")
    wall_width: int = Field(2, ge=1, le=8, description="Wall thickness in pixels.")
    door_size: int = Field(
        8, ge=2, le=32, description="Door height in pixels (a quarter of a 32 px image)."
    )
    max_step: float = Field(
        1.25,
        gt=0,
        le=8,
        description="Largest displacement per step in pixels (PLDM: 2.45 px at 65 px, so 1.2 at "
        "32 px); longer actions are scaled down to this norm.",
    )
    dot_sigma: float = Field(
        1.0, gt=0.3, le=4, description="Std (pixels) of the agent's Gaussian dot."
    )
    success_radius: float = Field(
        2.0, gt=0, le=16, description="An episode succeeds when it ends this close to the goal."
    )

    @model_validator(mode="after")
    def _fits(self) -> TwoRoomsSpec:
        if self.door_size > self.image_size // 2:
            raise FieldError("door_size must be at most half the image size", "door_size")
        if self.wall_width > self.image_size // 8:
            raise FieldError("wall_width must be at most an eighth of the image", "wall_width")
        return self


class TrajectorySpec(Spec):
    """Offline training data: heading-persistent random walks, generated from the run's seed."""

    trajectories: int = Field(
        4000, ge=8, le=1_000_000, description="Training trajectories (the prototype used 4000)."
    )
    length: int = Field(17, ge=3, le=256, description="Frames per training trajectory (PLDM: 17).")
    turn_std: float = Field(
        0.4,
        ge=0,
        le=6.3,
        description="Std (radians) of the heading change per step: small keeps walks straight "
        "enough to reach and cross the door.",
    )
    door_share: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Share of trajectories that start in front of the door heading through it "
        "(the rest start uniformly in both rooms): uniform starts alone cross the door in ~0.5 % "
        "of transitions, too rarely to learn cross-room moves (0.5 gives ~2.6 %).",
    )


class WorldModelSpec(Spec):
    """CNN encoder -> MLP projector with BatchNorm -> latent; residual MLP predictor."""

    latent: int = Field(64, ge=2, le=1024, description="Latent dimension D.")
    channels: int = Field(
        16,
        ge=4,
        le=256,
        description="Width of the CNN encoder's first layer (doubled twice). 16: a training step "
        "costs ~4x less on a CPU than at 32 channels.",
    )
    projector_hidden: int = Field(
        256,
        ge=8,
        le=4096,
        description="Hidden width of the projector (Linear-BatchNorm-ReLU-Linear); BatchNorm, "
        "not LayerNorm, since LayerNorm fights SIGReg's pull toward N(0, I).",
    )
    history: int = Field(
        1,
        ge=1,
        le=4,
        description="Past embeddings the predictor sees (padded with the first at the start).",
    )
    pred_hidden: int = Field(256, ge=8, le=4096, description="Predictor MLP width.")
    pred_blocks: int = Field(2, ge=1, le=8, description="Residual blocks of the predictor.")


class WorldLossSpec(Spec):
    """Teacher forcing (every step from real embeddings), plus an optional open-loop rollout loss
    (PLDM, V-JEPA 2-AC): the predictor fed its own predictions for ``rollout_steps`` steps."""

    rollout_steps: int = Field(
        0, ge=0, le=32, description="Open-loop steps of the rollout loss; 0 = teacher forcing only."
    )
    rollout_weight: float = Field(
        1.0, ge=0, le=10, description="Weight of the rollout loss beside teacher forcing."
    )


class CorrectionSpec(Spec):
    """A correction applied to every predicted step, blended with weight ``alpha``:
    z <- (1 - alpha) z + alpha * correct(z). The planner uses this one; drift is reported for
    every kind."""

    kind: Literal["none", "renorm", "knn"] = Field(
        "none",
        description="'renorm': rescale to the mean norm of real embeddings (the norm shell); "
        "'knn': soft projection onto a bank of encoded real frames from seeds disjoint from "
        "evaluation.",
    )
    alpha: float = Field(0.5, ge=0, le=1, description="Blend weight; 0 is the identity.")
    knn_k: int = Field(16, ge=1, le=1024, description="Neighbours of the kNN projection.")
    temperature: float = Field(
        0.1, gt=0, le=100, description="Softmax temperature (on squared distances / spread)."
    )
    bank_trajectories: int = Field(
        256, ge=1, le=100_000, description="Trajectories encoded into the kNN bank."
    )


class WorldEvalSpec(Spec):
    """Rollout drift on held-out trajectories, and collapse diagnostics."""

    horizon: int = Field(30, ge=1, le=128, description="Autoregressive rollout steps.")
    trajectories: int = Field(
        256, ge=8, le=100_000, description="Held-out trajectories (horizon + 1 frames each)."
    )
    probe_frames: int = Field(
        2048, ge=16, le=1_000_000, description="Real frames the ridge position probe is fit on."
    )
    ridge: float = Field(1e-2, gt=0, le=1e6, description="L2 of the ridge probe.")
    collapse_threshold: float = Field(
        1e-4,
        gt=0,
        le=1,
        description="Total variance per dimension of real embeddings below which the model is "
        "collapsed: NMSE is then NaN (a collapsed model drifts by 'zero').",
    )


class PlanningSpec(Spec):
    """CEM in latent space (and its baselines) on same-room and cross-room tasks."""

    episodes: int = Field(
        100, ge=0, le=100_000, description="Test episodes per task (paired seeds across arms)."
    )
    val_episodes: int = Field(
        32,
        ge=0,
        le=100_000,
        description="Validation episodes per task, from seeds disjoint from the test episodes: "
        "what a search objective reads.",
    )
    samples: int = Field(200, ge=4, le=100_000, description="CEM candidates per iteration.")
    iterations: int = Field(5, ge=1, le=100, description="CEM iterations per plan.")
    elites: int = Field(20, ge=1, le=10_000, description="Candidates refitted on.")
    horizon: int = Field(16, ge=1, le=128, description="Planned steps.")
    max_steps: int = Field(
        32, ge=1, le=512, description="Environment steps per episode (cross-room needs ~25)."
    )
    replan_every: int = Field(
        4, ge=1, le=128, description="Receding horizon: executed steps between plans."
    )
    noise_beta: float = Field(
        4.0,
        ge=0,
        le=8,
        description="Colour of CEM's sampling noise over the planned steps (iCEM, Pinneri et al. "
        "2020): power spectrum 1/f^beta. 0 is white noise (independent steps); 2 and more keep a "
        "heading, so candidates reach further in the same steps. 4 was chosen on validation "
        "episodes (docs/world.md).",
    )
    warm_start: bool = Field(
        True,
        description="Receding horizon: start each plan's CEM from the previous plan's remaining "
        "steps (then zeros) instead of from zero (iCEM's shift initialisation).",
    )
    cost: Literal["final", "all"] = Field(
        "final",
        description="'final': distance of the last predicted embedding to the goal's; 'all': "
        "mean over planned steps, weighted linearly toward the end.",
    )
    modes: list[Literal["open_loop", "receding"]] = Field(
        ["receding"],
        min_length=1,
        description="Planning modes evaluated (receding is the main one).",
    )
    baselines: bool = Field(
        True, description="Also run random actions and CEM with the true simulator."
    )

    @model_validator(mode="after")
    def _elites(self) -> PlanningSpec:
        if self.elites > self.samples:
            raise FieldError("elites must not exceed samples", "elites", "samples")
        return self


class WorldSpec(Spec):
    """One world-model run: generate data, train, evaluate rollouts and planning."""

    kind: Literal["world_model"] = Field(description="Marks a world-model spec.")
    name: str = Field("world", pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="Short identifier.")
    env: TwoRoomsSpec = Field(default_factory=TwoRoomsSpec, description="The environment.")
    data: TrajectorySpec = Field(default_factory=TrajectorySpec, description="Training data.")
    model: WorldModelSpec = Field(default_factory=WorldModelSpec, description="The model.")
    loss: WorldLossSpec = Field(default_factory=WorldLossSpec, description="Training losses.")
    strategy: StrategySpec = Field(description="Collapse prevention: ema, sigreg or none.")
    optim: OptimSpec = Field(description="Optimiser; epochs count training trajectories.")
    correction: CorrectionSpec = Field(
        default_factory=CorrectionSpec, description="Correction used by the planner."
    )
    eval: WorldEvalSpec = Field(default_factory=WorldEvalSpec, description="Rollout evaluation.")
    planning: PlanningSpec = Field(default_factory=PlanningSpec, description="Planning.")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed of weights, data and episodes.")
    log_every: int = Field(50, ge=1, description="Steps between logged training metrics.")

    @model_validator(mode="after")
    def _consistent(self) -> WorldSpec:
        if isinstance(self.strategy, SigregSpec):
            image_only = {
                "embeddings",
                "projector",
                "stop_gradient",
            } & self.strategy.model_fields_set
            if image_only:
                field = sorted(image_only)[0]
                raise FieldError(
                    f"strategy.{field} is an image-JEPA setting: the world model regularises "
                    "its projector's output at every time step",
                    f"strategy.{field}",
                )
        if self.loss.rollout_steps >= self.data.length:
            raise FieldError(
                "loss.rollout_steps must be shorter than data.length", "loss.rollout_steps"
            )
        if self.model.history >= self.data.length:
            raise FieldError("model.history must be shorter than data.length", "model.history")
        return self

    def to_dict(self) -> dict[str, Any]:
        """The resolved spec as plain data (aliases as written in YAML)."""
        return self.model_dump(mode="json", by_alias=True)

    def digest(self, *, with_seed: bool = True) -> str:
        """Stable 12-hex hash of the resolved spec; without the seed it is the ``config_id``."""
        data = self.to_dict()
        if not with_seed:
            data.pop("seed")
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


WORLD_KIND = "world_model"


def is_world(data: Mapping[str, Any]) -> bool:
    """Whether spec data (a parsed YAML mapping) is a world-model spec."""
    return "kind" in data and data["kind"] == WORLD_KIND
