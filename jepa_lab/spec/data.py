"""Dataset specs: which images an experiment trains and evaluates on, and their augmentation."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from jepa_lab.spec.base import FieldError, NotBool, Range, Spec


class AugmentSpec(Spec):
    """Batched on-device augmentation of the training images (never of evaluation images)."""

    crop_scale: Range = Field(
        (0.6, 1.0),
        description="Random resized crop: range of the crop's area as a fraction of the image. "
        "Mild by default: JEPA needs no invariance, crops only add data diversity.",
    )
    crop_ratio: Range = Field(
        (0.75, 1.3333), description="Random resized crop: range of the crop's aspect ratio (w/h)."
    )
    hflip: bool = Field(True, description="Random horizontal flip with probability 0.5.")

    @model_validator(mode="after")
    def _bounds(self) -> AugmentSpec:
        if not 0 < self.crop_scale[0] <= 1 or not 0 < self.crop_scale[1] <= 1:
            raise FieldError("crop_scale values must lie in (0, 1]", "crop_scale")
        if self.crop_ratio[0] <= 0:
            raise FieldError("crop_ratio values must be > 0", "crop_ratio")
        return self


class _DataBase(Spec):
    subset: int | None = Field(
        None,
        ge=1,
        description="Train on only the first N training images (quick runs); null = all. "
        "Evaluation always uses the full test split.",
    )
    augment: AugmentSpec | None = Field(
        default_factory=AugmentSpec, description="Training augmentation; null disables it."
    )


class FashionMnistSpec(_DataBase):
    """Fashion-MNIST: 60k train / 10k test, 28x28 grey, 10 classes (official IDX files)."""

    name: Literal["fashion-mnist"] = Field(description="Dataset name.")
    image_size: ClassVar[int] = 28
    channels: ClassVar[int] = 1
    n_classes: ClassVar[int] = 10


class Cifar10Spec(_DataBase):
    """CIFAR-10: 50k train / 10k test, 32x32 RGB, 10 classes (official python pickle batches)."""

    name: Literal["cifar10"] = Field(description="Dataset name.")
    image_size: ClassVar[int] = 32
    channels: ClassVar[int] = 3
    n_classes: ClassVar[int] = 10


class SyntheticSpec(_DataBase):
    """Procedurally generated labelled images (class = shape and texture), for fast tests."""

    name: Literal["synthetic"] = Field(description="Dataset name.")
    image_size: int = Field(16, ge=4, le=512, description="Height and width in pixels.")
    channels: Annotated[Literal[1, 3], NotBool] = Field(1, description="1 (grey) or 3 (RGB).")
    n_classes: int = Field(4, ge=2, le=16, description="Number of classes.")
    n_train: int = Field(1024, ge=16, le=1_000_000, description="Training images generated.")
    n_test: int = Field(256, ge=16, le=1_000_000, description="Test images generated.")


DataSpec = Annotated[FashionMnistSpec | Cifar10Spec | SyntheticSpec, Field(discriminator="name")]
