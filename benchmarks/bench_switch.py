"""How fast the predictor switches between two LoRAs at the real SDXL UNet size.

The UNet is built from SDXL base's real config on the meta device and materialised with
random bf16 weights (no download; see benchmarks/sdxl_architecture.py). Two random rank-32
LoRAs on every attention projection (~93 MB each) are saved as diffusers-layout safetensors.
Then, in one run:

- ours, warm: both LoRAs already in the weights cache (in memory); a switch copies tensors
  into the existing LoRA layers;
- ours, cold: the LoRA is read from local disk and converted, then copied in;
- diffusers unfused: `unload_lora_weights` + `load_lora_weights`;
- diffusers fused: `unfuse_lora` + `unload_lora_weights`, then `load_lora_weights` + `fuse_lora`;
- diffusers hotswap: `load_lora_weights(..., hotswap=True)`.

Finally it checks that after a sequence of switches the UNet output is bit-identical to a
fresh load of the same LoRA.

    .venv/bin/python benchmarks/bench_switch.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.sdxl_architecture import build_unet as build_sdxl_unet  # noqa: E402
from families import SDXL  # noqa: E402
from generation.layer_names import LayerNames  # noqa: E402
from generation.switcher import Selection, WeightsSwitcher  # noqa: E402
from generation.weights_cache import prepare_weights  # noqa: E402
from weights.embedded.tiny import ensure_tiny_model  # noqa: E402
from weights.runtime import Runtime  # noqa: E402
from weights.trained_files import inspect_weights  # noqa: E402

RANK = 32
PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")
DTYPE = torch.bfloat16


def build_unet(device="cpu") -> UNet2DConditionModel:
    return build_sdxl_unet(device, DTYPE).requires_grad_(False).eval()


def write_lora(unet, file: Path, seed: int) -> int:
    """A random rank-32 LoRA on every attention projection, in diffusers keys."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, module in unet.named_modules():
        if name.endswith(PROJECTIONS) and isinstance(module, torch.nn.Linear):
            down = torch.randn(RANK, module.in_features, generator=generator) * 0.01
            up = torch.randn(module.out_features, RANK, generator=generator) * 0.01
            tensors[f"unet.{name}.lora_A.weight"] = down.to(DTYPE)
            tensors[f"unet.{name}.lora_B.weight"] = up.to(DTYPE)
    save_file(tensors, str(file))
    return sum(t.nbytes for t in tensors.values())


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def median_of(repeats: int, files, switch) -> float:
    """Alternate between the two LoRAs; the median switch time."""
    return statistics.median(timed(lambda i=i: switch(files[(i + 1) % 2])) for i in range(repeats))


def unet_output(unet) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    device, config = unet.device, unet.config
    pooled = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
    sample = torch.randn(1, 4, 8, 8, generator=generator).to(device, DTYPE)
    text = torch.randn(1, 8, config.cross_attention_dim, generator=generator).to(device, DTYPE)
    added = {
        "text_embeds": torch.randn(1, pooled, generator=generator).to(device, DTYPE),
        "time_ids": torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]]).to(device, DTYPE),
    }
    with torch.no_grad():
        return unet(sample, 500, text, added_cond_kwargs=added).sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_grad_enabled(False)

    started = time.perf_counter()
    unet = build_unet()
    parameters = sum(p.numel() for p in unet.parameters())
    print(
        f"SDXL UNet: {parameters / 1e9:.2f} B parameters, bf16, materialised in "
        f"{time.perf_counter() - started:.0f} s"
    )
    folder = Path(tempfile.mkdtemp(prefix="bench-switch-"))
    try:
        rows, identical = run(unet, folder, args.repeats)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(
        f"\nswitch time between two LoRAs, median of {args.repeats}, "
        f"{torch.get_num_threads()} threads\n"
    )
    print(f"| {'method':<50} | seconds |")
    print(f"|{'-' * 52}|---------|")
    for name, seconds in rows:
        print(f"| {name:<50} | {seconds:7.3f} |")
    print(f"\nUNet output after A->B->A->none->B->A identical to a fresh load of A: {identical}")


def run(unet, folder: Path, repeats: int) -> tuple[list[tuple[str, float]], bool]:
    """(method, median switch seconds) rows, and whether the output after a sequence of
    switches is bit-identical to a fresh load; on the UNet's device."""
    files = [folder / "lora_a.safetensors", folder / "lora_b.safetensors"]
    size = write_lora(unet, files[0], seed=1)
    write_lora(unet, files[1], seed=2)
    print(
        f"two rank-{RANK} LoRAs on {len(PROJECTIONS)} attention projections, "
        f"{size / 1e6:.0f} MB each"
    )

    rows = []
    # Ours.
    switcher = WeightsSwitcher({"unet": unet}, token_targets=[])
    runtime = Runtime(unet.device, DTYPE)
    layers = LayerNames({"unet": unet}, SDXL)
    read = {
        f: lambda f=f: prepare_weights(inspect_weights(f), runtime, SDXL, layers) for f in files
    }
    prepared = {f: read[f]() for f in files}
    first = timed(lambda: switcher.activate(Selection(prepared[files[0]])))
    rows.append(("ours: first load (builds the LoRA layers)", first))
    rows.append(
        (
            "ours: warm switch (LoRA in memory)",
            median_of(repeats, files, lambda f: switcher.activate(Selection(prepared[f]))),
        )
    )
    rows.append(
        (
            "ours: cold switch (read from disk)",
            median_of(repeats, files, lambda f: switcher.activate(Selection(read[f]()))),
        )
    )

    # Bit-identical to a fresh load after a sequence of switches.
    for f in (files[1], files[0], None, files[1], files[0]):
        switcher.activate(Selection(prepared[f] if f else None))
    after_switches = unet_output(unet)
    switcher.reset()
    switcher.activate(Selection(prepared[files[0]]))
    identical = torch.equal(after_switches, unet_output(unet))
    switcher.reset()

    # Diffusers baselines on a pipeline around the same UNet (other components tiny).
    tiny = ensure_tiny_model("base", folder / "models")
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny, unet=unet).to(unet.device)
    pipe.load_lora_weights(str(files[0]), adapter_name="bench")

    def unfused(file):
        pipe.unload_lora_weights()
        pipe.load_lora_weights(str(file), adapter_name="bench")

    rows.append(("diffusers: unfused (unload + load)", median_of(repeats, files, unfused)))
    pipe.fuse_lora()

    def fused(file):
        pipe.unfuse_lora()
        pipe.unload_lora_weights()
        pipe.load_lora_weights(str(file), adapter_name="bench")
        pipe.fuse_lora()

    rows.append(
        ("diffusers: fused (unfuse + unload + load + fuse)", median_of(repeats, files, fused))
    )
    pipe.unfuse_lora()
    pipe.unload_lora_weights()
    pipe.load_lora_weights(str(files[0]), adapter_name="bench")

    def hotswap(file):
        pipe.load_lora_weights(str(file), adapter_name="bench", hotswap=True)

    rows.append(("diffusers: hotswap=True", median_of(repeats, files, hotswap)))
    pipe.unload_lora_weights()
    return rows, identical


if __name__ == "__main__":
    main()
