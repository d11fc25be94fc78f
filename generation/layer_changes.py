"""How a LoRA file changes one layer's weight, for the formats whose change is not a low-rank
pair the LoRA slots can hold: LyCORIS's LoKr and LoHa, and DoRA (on a LoRA, LoKr or LoHa).

Each change gives the weight it makes from the weight it is applied to, as the formats define
it (LyCORIS; ComfyUI's comfy/weight_adapter/ reads them the same way): with ΔW computed in fp32
from the file's factors, `scale` being the file's alpha over its rank as its format counts it,

- LoRA: ΔW = scale · up @ down;
- LoKr: ΔW = scale · kron(w1, w2), each factor stored whole or as a product a @ b (w2 also as
  a Tucker product of a core t2 with a and b, for convolutions);
- LoHa: ΔW = scale · (w1a @ w1b) ⊙ (w2a @ w2b) (or each a Tucker product with t1 / t2);
- DoRA on any of them: W' = m · (W + ΔW) / ‖W + ΔW‖, the norm taken per output row (PEFT's
  `lora_magnitude_vector`, LyCORIS's `wd_on_out`) or per input column (LyCORIS's default
  then), as the magnitude's shape tells.

`delta(W)` is W' − W: the change at strength 1. ΔW is reshaped to the weight's shape, which for
a convolution flattens (in, kh, kw) in that order.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Factor:
    """One matrix of a LyCORIS file: stored whole, as a product a @ b, or as a Tucker product
    of `core` [i, j, kh, kw] with a [i, p] and b [j, r] (giving [p, r, kh, kw])."""

    whole: torch.Tensor | None = None
    a: torch.Tensor | None = None
    b: torch.Tensor | None = None
    core: torch.Tensor | None = None

    def matrix(self) -> torch.Tensor:
        if self.whole is not None:
            return self.whole.float()
        if self.core is not None:
            return torch.einsum(
                "ijkl,ip,jr->prkl", self.core.float(), self.a.float(), self.b.float()
            )
        return self.a.float() @ self.b.float()

    @property
    def shape(self) -> tuple[int, ...]:
        if self.whole is not None:
            return tuple(self.whole.shape)
        if self.core is not None:
            return (self.a.shape[1], self.b.shape[1], *self.core.shape[2:])
        return (self.a.shape[0], self.b.shape[1])

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in (self.whole, self.a, self.b, self.core) if t is not None)


class LayerChange(ABC):
    """One file's change of one layer's weight (or of a fused weight, its layers' rows)."""

    @abstractmethod
    def delta(self, weight: torch.Tensor) -> torch.Tensor:
        """W' − W for the fp32 weight `weight`, in fp32."""

    @property
    @abstractmethod
    def rows(self) -> int:
        """The output rows of the weight this change fits."""

    @property
    @abstractmethod
    def size(self) -> int:
        """The number of entries of the weight this change fits."""

    @property
    @abstractmethod
    def nbytes(self) -> int: ...

    def misfit(self, shape: torch.Size) -> str | None:
        """Why this change cannot apply to a weight of `shape`; None when it can."""
        if shape[0] != self.rows or shape.numel() != self.size:
            return f"changes a weight of {self.rows} rows and {self.size} entries"
        return None


@dataclass(frozen=True, eq=False)
class LowRankChange(LayerChange):
    up: torch.Tensor  # [out, rank] (or [out, rank, 1, 1])
    down: torch.Tensor  # [rank, in] (or [rank, in, kh, kw])
    scale: float

    def delta(self, weight: torch.Tensor) -> torch.Tensor:
        product = self.up.flatten(1).float() @ self.down.flatten(1).float()
        return (self.scale * product).reshape(weight.shape)

    @property
    def rows(self) -> int:
        return self.up.shape[0]

    @property
    def size(self) -> int:
        return self.up.shape[0] * self.down[0].numel()

    @property
    def nbytes(self) -> int:
        return self.up.nbytes + self.down.nbytes


@dataclass(frozen=True, eq=False)
class KroneckerChange(LayerChange):
    """LoKr."""

    w1: Factor
    w2: Factor
    scale: float

    def delta(self, weight: torch.Tensor) -> torch.Tensor:
        w1, w2 = self.w1.matrix(), self.w2.matrix()
        if w2.ndim == 4:  # a convolution's kernel lives in w2
            w1 = w1[:, :, None, None]
        return (self.scale * torch.kron(w1, w2.contiguous())).reshape(weight.shape)

    @property
    def rows(self) -> int:
        return self.w1.shape[0] * self.w2.shape[0]

    @property
    def size(self) -> int:
        return _count(self.w1.shape) * _count(self.w2.shape)

    @property
    def nbytes(self) -> int:
        return self.w1.nbytes + self.w2.nbytes


@dataclass(frozen=True, eq=False)
class HadamardChange(LayerChange):
    """LoHa."""

    w1: Factor
    w2: Factor
    scale: float

    def delta(self, weight: torch.Tensor) -> torch.Tensor:
        return (self.scale * self.w1.matrix() * self.w2.matrix()).reshape(weight.shape)

    @property
    def rows(self) -> int:
        return self.w1.shape[0]

    @property
    def size(self) -> int:
        return _count(self.w1.shape)

    @property
    def nbytes(self) -> int:
        return self.w1.nbytes + self.w2.nbytes


@dataclass(frozen=True, eq=False)
class DoraChange(LayerChange):
    """DoRA: `inner`'s ΔW, then each output row (or input column) rescaled to `magnitude`."""

    inner: LayerChange
    magnitude: torch.Tensor
    # True: per output row (PEFT); None: as the magnitude's shape tells (LyCORIS, ComfyUI: per
    # output row when its first dimension is the weight's, else per input column).
    on_output: bool | None

    def delta(self, weight: torch.Tensor) -> torch.Tensor:
        directions = weight + self.inner.delta(weight)
        if self._per_row(weight.shape):
            norm = directions.flatten(1).norm(dim=1)
            norm = norm.reshape(-1, *[1] * (weight.ndim - 1))
        else:
            norm = directions.transpose(0, 1).flatten(1).norm(dim=1)
            norm = norm.reshape(1, -1, *[1] * (weight.ndim - 2))
        magnitude = self.magnitude.float().reshape(norm.shape)
        return magnitude * directions / norm - weight

    def _per_row(self, shape: torch.Size) -> bool:
        if self.on_output is not None:
            return self.on_output
        return self.magnitude.shape[0] == shape[0]

    def misfit(self, shape: torch.Size) -> str | None:
        problem = self.inner.misfit(shape)
        wanted = shape[0] if self._per_row(shape) else shape[1]
        if problem is None and self.magnitude.numel() != wanted:
            problem = f"has a DoRA magnitude of {self.magnitude.numel()} entries, not {wanted}"
        return problem

    @property
    def rows(self) -> int:
        return self.inner.rows

    @property
    def size(self) -> int:
        return self.inner.size

    @property
    def nbytes(self) -> int:
        return self.inner.nbytes + self.magnitude.nbytes


def _count(shape: tuple[int, ...]) -> int:
    return int(torch.Size(shape).numel())
