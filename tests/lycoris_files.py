"""LoRA files in LyCORIS's layout (LoKr, LoHa, DoRA) for the tiny models, written here from
the formats' definitions (LyCORIS; ComfyUI's comfy/weight_adapter/ reads the same keys), each
layer's changed weight computed independently of the predictor's code, in float64, with the
bound within which the predictor's float32 computation must land, and the checks of a
model's weights against them."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

U32 = 2.0**-24  # float32's unit roundoff


@dataclass
class Layer:
    """One layer of a file: its name there, the model layers it means (rows stacked), the
    formula that makes its ΔW, and the tensors under `<name>.<part>`."""

    name: str
    component: str
    modules: tuple[str, ...]
    kind: str  # "lora", "lokr" or "loha"
    parts: dict[str, torch.Tensor] = field(default_factory=dict)

    def keys(self) -> dict[str, torch.Tensor]:
        return {f"{self.name}.{part}": value for part, value in self.parts.items()}


def file_tensors(layers: list[Layer]) -> dict[str, torch.Tensor]:
    tensors = {}
    for layer in layers:
        tensors.update(layer.keys())
    return tensors


def _random(generator, *shape) -> torch.Tensor:
    return torch.randn(*shape, generator=generator) * 0.5


def lokr_layer(name, component, modules, shape, generator, *, w1, w2, rank=3, alpha=None):
    """`shape`: the weight's (out, in, *kernel); w1 [2, 2] whole or "ab" (a product of rank
    `rank` - 1); w2 the rest, "whole", "ab" or "tucker" (a convolution's kernel in a Tucker
    core), of rank `rank`."""
    out, inner, *kernel = shape
    parts = {}
    if w1 == "whole":
        parts["lokr_w1"] = _random(generator, 2, 2)
    else:
        parts["lokr_w1_a"] = _random(generator, 2, rank - 1)
        parts["lokr_w1_b"] = _random(generator, rank - 1, 2)
    if w2 == "whole":
        parts["lokr_w2"] = _random(generator, out // 2, inner // 2, *kernel)
    elif w2 == "tucker":
        parts["lokr_t2"] = _random(generator, rank, rank, *kernel)
        parts["lokr_w2_a"] = _random(generator, rank, out // 2)
        parts["lokr_w2_b"] = _random(generator, rank, inner // 2)
    else:
        parts["lokr_w2_a"] = _random(generator, out // 2, rank)
        parts["lokr_w2_b"] = _random(generator, rank, inner // 2 * _count(kernel))
    if alpha is not None:
        parts["alpha"] = torch.tensor(float(alpha))
    return Layer(name, component, modules, "lokr", parts)


def loha_layer(name, component, modules, shape, generator, *, tucker=False, rank=3, alpha=None):
    out, inner, *kernel = shape
    parts = {}
    for index in (1, 2):
        if tucker:
            parts[f"hada_t{index}"] = _random(generator, rank, rank, *kernel)
            parts[f"hada_w{index}_a"] = _random(generator, rank, out)
            parts[f"hada_w{index}_b"] = _random(generator, rank, inner)
        else:
            parts[f"hada_w{index}_a"] = _random(generator, out, rank)
            parts[f"hada_w{index}_b"] = _random(generator, rank, inner * _count(kernel))
    if alpha is not None:
        parts["alpha"] = torch.tensor(float(alpha))
    return Layer(name, component, modules, "loha", parts)


def lora_layer(name, component, modules, shape, generator, *, rank=4, alpha=None, dora=None):
    """A kohya LoRA layer; `dora`: None, "out" (a magnitude per output row, [out, 1, ...]) or
    "in" (per input column, [1, in, ...]: LyCORIS's default)."""
    out, inner, *kernel = shape
    parts = {
        "lora_down.weight": _random(generator, rank, inner, *kernel),
        "lora_up.weight": _random(generator, out, rank, *[1] * len(kernel)),
    }
    if alpha is not None:
        parts["alpha"] = torch.tensor(float(alpha))
    if dora == "out":
        parts["dora_scale"] = 1 + torch.rand(out, 1, *[1] * len(kernel), generator=generator)
    elif dora == "in":
        parts["dora_scale"] = 1 + torch.rand(1, inner, *[1] * len(kernel), generator=generator)
    return Layer(name, component, modules, "lora", parts)


def _count(shape) -> int:
    return int(torch.Size(shape).numel())


# --- the formulas, in float64 ----------------------------------------------------------------


def _tucker(core, a, b) -> torch.Tensor:
    """[p, r, kh, kw] = Σ_i Σ_j core[i, j, kh, kw] · a[i, p] · b[j, r]."""
    mixed = torch.tensordot(torch.tensordot(core, a, dims=([0], [0])), b, dims=([0], [0]))
    return mixed.permute(2, 3, 0, 1)  # [kh, kw, p, r] -> [p, r, kh, kw]


def _kron(a, b) -> torch.Tensor:
    """a ⊗ b for a [m, n] and b [p, q, *kernel]: [m·p, n·q, *kernel]."""
    kernel = b.shape[2:]
    spread = a.reshape(a.shape[0], 1, a.shape[1], 1, *[1] * len(kernel))
    product = spread * b[None, :, None, :]
    return product.reshape(a.shape[0] * b.shape[0], a.shape[1] * b.shape[1], *kernel)


def _factor(parts, name, core):
    """(the factor, the same over absolute values, its longest sum) in float64."""
    if name in parts:
        whole = parts[name].double()
        return whole, whole.abs(), 1
    a, b = parts[f"{name}_a"].double(), parts[f"{name}_b"].double()
    if core in parts:
        t = parts[core].double()
        return _tucker(t, a, b), _tucker(t.abs(), a.abs(), b.abs()), t.shape[0] * t.shape[1]
    return a @ b, a.abs() @ b.abs(), a.shape[1]


def delta(layer: Layer, shape) -> tuple[torch.Tensor, torch.Tensor, int]:
    """ΔW at strength 1 (before DoRA), the same formula over absolute values, and the longest
    sum of products computing one entry."""
    parts = layer.parts
    if layer.kind == "lora":
        down, up = parts["lora_down.weight"].double(), parts["lora_up.weight"].double()
        rank = down.shape[0]
        exact = up.flatten(1) @ down.flatten(1)
        envelope = up.flatten(1).abs() @ down.flatten(1).abs()
        terms = rank
    elif layer.kind == "lokr":
        (w1, e1, t1), (w2, e2, t2) = (
            _factor(parts, "lokr_w1", None),
            _factor(parts, "lokr_w2", "lokr_t2"),
        )
        if w2.ndim == 2 and len(shape) == 4:
            w2, e2 = (
                w2.reshape(w2.shape[0], -1, *shape[2:]),
                e2.reshape(e2.shape[0], -1, *shape[2:]),
            )
        exact, envelope, terms = _kron(w1, w2), _kron(e1, e2), t1 + t2
        decomposed = (
            "lokr_w2_b" if "lokr_w2_b" in parts else "lokr_w1_b" if "lokr_w1_b" in parts else None
        )
        rank = parts[decomposed].shape[0] if decomposed else None
    else:
        (m1, e1, t1), (m2, e2, t2) = (
            _factor(parts, "hada_w1", "hada_t1"),
            _factor(parts, "hada_w2", "hada_t2"),
        )
        exact, envelope, terms = m1 * m2, e1 * e2, t1 + t2
        rank = parts["hada_w1_b"].shape[0]
    scale = float(parts["alpha"]) / rank if "alpha" in parts and rank else 1.0
    return (scale * exact).reshape(shape), (abs(scale) * envelope).reshape(shape), terms


def cast_rounding(dtype: torch.dtype, exact: torch.Tensor) -> torch.Tensor:
    """The float32 result's one rounding to the model's dtype (half a unit in the last place:
    bf16 or fp16 on a GPU; already in `changed_weight`'s bound for fp32)."""
    return torch.finfo(dtype).eps / 2 * exact.abs()


def changed_weight(layer: Layer, weight: torch.Tensor, strength: float):
    """The layer's weight after the file at `strength`: float64, and the bound on the
    difference of the predictor's float32 result from it.

    The bound: every entry the predictor computes in float32 is sums of at most n products
    (n: `terms`), whose error is at most γ_n = n·u/(1 − n·u) times the same sums over absolute
    values (Higham, Accuracy and Stability of Numerical Algorithms, §3.1), plus one rounding
    each for the alpha scale, the strength, the final addition and the cast (4u of the
    magnitudes involved). DoRA adds the norm (a sum of `in` squares: γ_in relative, halved by
    the square root, and the error of its entries) and the division and product (2u)."""
    shape = weight.shape
    w = weight.double()
    change, envelope, terms = delta(layer, shape)
    dora = layer.parts.get("dora_scale")
    if dora is None:
        exact = w + strength * change
        gamma = (terms + 4) * U32
        return exact, gamma * (w.abs() + abs(strength) * envelope)
    directions = w + change
    direction_error = (terms + 4) * U32 * (w.abs() + envelope)
    per_row = dora.shape[0] == shape[0]
    dims = tuple(range(1, w.ndim)) if per_row else (0, *range(2, w.ndim))
    norm = torch.linalg.vector_norm(directions, dim=dims, keepdim=True)
    summed = int(torch.Size([shape[d] for d in dims]).numel())
    norm_error = (summed + 2) * U32 * norm + torch.linalg.vector_norm(
        direction_error, dim=dims, keepdim=True
    )
    magnitude = dora.double().reshape(norm.shape)
    decomposed = magnitude * directions / norm
    decomposed_error = magnitude / norm * (direction_error + directions.abs() * norm_error / norm)
    exact = w + strength * (decomposed - w)
    rounding = 4 * U32 * (w.abs() + decomposed.abs())
    return exact, abs(strength) * (decomposed_error + 2 * U32 * decomposed.abs()) + rounding


# --- the models' weights against the formulas ------------------------------------------------


def snapshot(models: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """Every parameter of the models, as the base layers name them; but the token tables,
    where trained tokens take rows that pristine tokenizers never reach (test_predict_weights
    covers them)."""
    return {
        f"{name}.{key.replace('.base_layer.', '.')}": value.detach().clone()
        for name, model in models.items()
        for key, value in model.state_dict().items()
        if ".lora_" not in key and "token_embedding" not in key
    }


def fused_weight(models, layer: Layer) -> torch.Tensor:
    model = models[layer.component]
    return torch.cat([_base_layer(model, m).weight.detach() for m in layer.modules])


def _base_layer(model, name):
    module = model.get_submodule(name)
    return module.get_base_layer() if hasattr(module, "get_base_layer") else module


def assert_changed_as_formula(models, applied: list[tuple[Layer, float]], before) -> None:
    """Each changed weight is its formula's, with the changes of several files (layer,
    strength) on one weight added up, and every other tensor is bit-identical to `before`."""
    by_weight: dict[tuple, list[tuple[Layer, float]]] = {}
    for layer, strength in applied:
        by_weight.setdefault((layer.component, layer.modules), []).append((layer, strength))
    changed = set()
    for (component, modules), changes in by_weight.items():
        base = torch.cat([before[f"{component}.{m}.weight"] for m in modules])
        exact, bound = base.double(), torch.zeros_like(base, dtype=torch.float64)
        for layer, strength in changes:
            made, error = changed_weight(layer, base, strength)
            exact, bound = exact + (made - base.double()), bound + error
        got = fused_weight(models, changes[0][0])
        bound = bound + cast_rounding(got.dtype, exact)
        got = got.double()
        worst = ((got - exact).abs() - bound).max()
        assert worst <= 0, f"{modules}: off its formula by {worst:g} beyond the bound"
        assert not torch.equal(got, base.double()), f"{modules} did not change"
        changed |= {f"{component}.{m}.weight" for m in modules}
    after = snapshot(models)
    for key, value in before.items():
        if key not in changed:
            assert torch.equal(after[key], value), f"{key} changed"


def assert_base(models, before) -> None:
    after = snapshot(models)
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), f"{key} is not the base value bit for bit"
