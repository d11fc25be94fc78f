"""kohya's LoRA names (A1111, ComfyUI, kohya's scripts): each layer as its module path with `_`
for `.` after the component's prefix (`lora_unet_…`, `lora_te1_…`), peft's parts by kohya's
names, an `.alpha` per layer, a DoRA's magnitude as LyCORIS's `.dora_scale` and a LoKr's
factors as `.lokr_w1`, `.lokr_w2_a`, …"""

from __future__ import annotations

import torch

# peft's key of a part in lora.safetensors -> kohya's (LoKr's parts keep their names).
KOHYA_PARTS = {
    "lora_A.weight": "lora_down.weight",
    "lora_B.weight": "lora_up.weight",
    "lora_magnitude_vector": "dora_scale",
}


def kohya_tensors(
    lora: dict[str, torch.Tensor], adapters: dict, prefixes: dict[str, str]
) -> dict[str, torch.Tensor]:
    """`lora`: `<component>.<module>.<part>` tensors (diffusers / peft keys); `adapters`: the
    peft configs as diffusers stores them in the file's metadata (`<component>.lora_alpha`,
    …); `prefixes`: kohya's prefix of each component. The alpha is the adapter's (diffusers'
    own converter would write the rank); a DoRA magnitude becomes one per output row (`[out,
    1]`, LyCORIS's `wd_on_out`)."""
    kohya = {}
    for key, value in lora.items():
        component, _, rest = key.partition(".")
        cut = 2 if rest.endswith(".weight") else 1  # `.lora_A.weight`, `.lokr_w1`
        module, part = ".".join(rest.split(".")[:-cut]), ".".join(rest.split(".")[-cut:])
        name = f"{prefixes[component]}_{module.replace('.', '_')}"
        if part == "lora_magnitude_vector":
            weight_dims = lora[f"{component}.{module}.lora_A.weight"].ndim
            value = value.reshape(-1, *[1] * (weight_dims - 1))
        kohya[f"{name}.{KOHYA_PARTS.get(part, part)}"] = value.contiguous()
        alpha = adapters.get(f"{component}.lora_alpha", adapters.get(f"{component}.alpha"))
        kohya[f"{name}.alpha"] = torch.tensor(float(alpha))
    return kohya
