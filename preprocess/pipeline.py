"""The preprocessing pipeline: an upload of photos in, a folder of crops, masks and
captions out (the first half of `train()`).

    dataset = preprocess(PreprocessConfig(input_path=Path("photos.zip"), output_dir=out))

The output folder is a prepared dataset (formats/dataset_folder.py: crops, masks and
`captions.csv`) plus a `preview.png` contact sheet. Captions keep the trigger word as plain
text; the trainer substitutes its tokens (formats/tokens.py).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from PIL import Image
from tqdm.auto import tqdm

from formats.dataset_folder import CAPTIONS_FILE, CaptionedImage, write_captions
from formats.input_ranges import one_of, range_problems, ranged
from preprocess.captioning import (
    Captioner,
    caption_images,
    effective_prefix,
    find_caption_sources,
    report_mismatches,
)
from preprocess.crops import (
    aspect_buckets,
    box_center,
    center_of_mass,
    closest_bucket,
    crop_box,
    square,
)
from preprocess.errors import PreprocessError
from preprocess.images import ImageRejected, load_image, shrink_to_cover
from preprocess.intake import FILETYPES, open_upload
from preprocess.masks import (
    CLIPSEG_BATCH,
    ClipSegMasker,
    FaceDetector,
    face_mask,
    whole_image_mask,
)
from preprocess.model_loading import load_preprocessor
from preprocess.preview import contact_sheet
from preprocess.stages import StageClock
from preprocess.upscale import Upscaler, needs_upscaling, resize_to
from weights.runtime import pick_runtime
from weights.settings import ModelSettings

logger = logging.getLogger(__name__)

PREVIEW = "preview.png"
# Masks and faces are computed on images whose short side is at least this (or the original).
WORKING_SIDE = 512
# zlib level 1: photos barely compress further, and level 6 takes ~3x longer to write.
PNG_COMPRESSION = 1
IO_THREADS = min(8, os.cpu_count() or 1)


@dataclass(frozen=True)
class PreprocessConfig:
    input_path: Path  # archive file (zip/tar/tar.gz) or a local folder
    output_dir: Path  # created; must not exist or be empty
    resolution: int = 768
    token_string: str = "TOK"
    caption_prefix: str = "a photo of TOK, "
    caption_suffix: str = ""  # after generated captions, e.g. " in the style of TOK"
    autocaption: bool = True  # False: images without a caption file get the prefix alone
    mask_target_prompts: str | None = None
    crop_based_on_salience: bool = True
    use_face_detection_instead: bool = False
    # The CLIPSeg logits are divided by it (0.5-1 advised): at 10 the mask is already a blur
    # of nearly uniform weight, so nothing larger is useful.
    clipseg_temperature: float = ranged(1.0, 0.0, 10.0)
    input_images_filetype: str = one_of("infer", FILETYPES)
    aspect_buckets: bool = False
    size_multiple: int = 8  # of every crop's sides: the family's pixel_multiple
    # Which models to use and where to run them; None reads the environment (settings.py).
    settings: ModelSettings | None = None

    def __post_init__(self):
        """Every option checked when the config is made, before any work."""
        problems = range_problems(self)
        if self.resolution < 8:
            problems.append(f"resolution must be at least 8 pixels, got {self.resolution}.")
        if self.clipseg_temperature <= 0:
            problems.append(
                f"clipseg_temperature must be positive, got {self.clipseg_temperature}."
            )
        if not self.token_string.strip():
            problems.append("token_string must not be empty.")
        if problems:
            raise PreprocessError(" ".join(problems))


@dataclass(frozen=True)
class TrainingImage:
    image_path: Path
    mask_path: Path
    caption: str
    source: str = ""  # the file's name in the upload
    upscaled: bool = False  # its crop was smaller than its training size


@dataclass(frozen=True)
class PreparedDataset:
    folder: Path
    captions_csv: Path
    preview: Path
    images: list[TrainingImage]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)


def preprocess(config: PreprocessConfig, clock: StageClock | None = None) -> PreparedDataset:
    """Unpack, load, caption, mask, crop and upscale the upload; write the dataset folder.
    `clock` (optional) receives the time spent in each stage."""
    settings = config.settings or ModelSettings.from_env()
    clock = clock or StageClock()
    output_dir = Path(config.output_dir)
    _check_config(config, output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}-", dir=output_dir.parent))
    targets = _targets(config)
    try:
        # 1. Unpack the upload; sort its files into images, caption files and the rest.
        with clock.stage("unpack"):
            upload = open_upload(
                config.input_path, config.input_images_filetype, scratch / "upload"
            )
            sources = find_caption_sources(upload.files, upload.images, upload.root)
            skipped = [(n, r) for n, r in upload.not_images if n not in sources.used_files]

        # 2. Load every image upright, in RGB, no larger than the work needs.
        with clock.stage("load"):
            names, images, rejected = _load_images(upload, targets)
            skipped += rejected
            if skipped:
                logger.warning("Skipped: %s", "; ".join(f"{n} ({r})" for n, r in skipped))
            if not images:
                raise PreprocessError(_nothing_usable(config.input_path, skipped))
            report_mismatches(sources, names)

        # 3. Captions: caption.csv, .txt, then BLIP after the prefix (which has the trigger).
        with clock.stage("caption"):
            suffix = config.caption_suffix
            prefix = effective_prefix(config.caption_prefix, config.token_string, suffix)
            needs_blip = config.autocaption and any(n not in sources.captions for n in names)
            captioner = _load_captioner(settings) if needs_blip else None
            captions = caption_images(
                names, images, sources, captioner, prefix, config.token_string, suffix
            )
            del captioner

        # 4. Masks: CLIPSeg for a prompt, faces when asked, else the whole image.
        with clock.stage("mask"):
            face_boxes = _detect_faces(config, images)
            masks = _make_masks(config, settings, images, face_boxes)

        # 5. Crop around the mask's centre of mass, the faces, or the centre.
        with clock.stage("crop"):
            sizes = [_target_for(image.size, targets) for image in images]
            crops, mask_crops = _crop(config, images, masks, face_boxes, sizes)
            del images, masks

        # 6. Upscale small crops (Swin2SR); bring every crop and mask to its training size.
        with clock.stage("upscale"):
            upscaled = [
                needs_upscaling(crop, size) for crop, size in zip(crops, sizes, strict=True)
            ]
            crops, mask_crops = _resize(settings, crops, mask_crops, sizes)

        # 7. Write crops, masks, captions.csv and the preview; move the folder into place.
        with clock.stage("save"):
            staging = scratch / "dataset"
            staging.mkdir()
            rows = _write_dataset(staging, names, crops, mask_crops, captions)
            tiles = list(zip(crops, mask_crops, captions, strict=True))
            contact_sheet(tiles).save(staging / PREVIEW, compress_level=PNG_COMPRESSION)
            if output_dir.exists():
                output_dir.rmdir()  # checked empty above
            staging.rename(output_dir)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    _log_summary(len(rows), skipped, clock)
    images_out = [
        TrainingImage(output_dir / row[0], output_dir / row[1], row[2], source, small)
        for row, source, small in zip(rows, names, upscaled, strict=True)
    ]
    return PreparedDataset(
        output_dir, output_dir / CAPTIONS_FILE, output_dir / PREVIEW, images_out, skipped
    )


def _load_images(upload, targets):
    def load(name: str) -> Image.Image | str:
        try:
            image = load_image(upload.root / name, _largest(targets))
        except ImageRejected as error:
            return str(error)
        return shrink_to_cover(image, _working_size(image, targets))

    names, images, rejected = [], [], []
    # Decoding and resampling release the GIL: threads load several photos at once.
    with ThreadPoolExecutor(IO_THREADS) as pool:
        loaded = pool.map(load, upload.images)
        for name, result in zip(
            upload.images,
            tqdm(loaded, total=len(upload.images), desc="Loading images", unit="image"),
            strict=True,
        ):
            if isinstance(result, str):
                rejected.append((name, result))
            else:
                names.append(name)
                images.append(result)
    return names, images, rejected


def _crop(config, images, masks, face_boxes, sizes):
    crops, mask_crops = [], []
    for image, mask, faces, size in zip(images, masks, face_boxes, sizes, strict=True):
        if config.crop_based_on_salience:
            center = center_of_mass(mask)
        else:
            center = box_center(faces or [], image.size)
        box = crop_box(image.size, size, center)
        crops.append(image.crop(box))
        mask_crops.append(mask.crop(box))
    return crops, mask_crops


def _resize(settings, crops, mask_crops, sizes):
    pairs = list(zip(crops, sizes, strict=True))
    small = any(crop.width < size[0] or crop.height < size[1] for crop, size in pairs)
    upscaler = _load_upscaler(settings) if small else None
    crops = [
        resize_to(crop, size, upscaler)
        for crop, size in tqdm(pairs, desc="Upscaling and resizing", unit="image")
    ]
    mask_crops = [
        mask.resize(size, Image.Resampling.BILINEAR)
        for mask, size in zip(mask_crops, sizes, strict=True)
    ]
    return crops, mask_crops


def _check_config(config: PreprocessConfig, output_dir: Path) -> None:
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise PreprocessError(f"{output_dir} already exists and is not an empty folder.")


def _targets(config: PreprocessConfig) -> list[tuple[int, int]]:
    if config.aspect_buckets:
        return aspect_buckets(config.resolution, config.size_multiple)
    return [square(config.resolution)]


def _target_for(size: tuple[int, int], targets: list[tuple[int, int]]) -> tuple[int, int]:
    return targets[0] if len(targets) == 1 else closest_bucket(size, targets)


def _largest(targets: list[tuple[int, int]]) -> tuple[int, int]:
    side = max(max(t) for t in targets)
    return max(side, WORKING_SIDE), max(side, WORKING_SIDE)


def _working_size(image: Image.Image, targets) -> tuple[int, int]:
    """Big enough to crop the target from, and for faces and masks to be found."""
    width, height = _target_for(image.size, targets)
    scale = max(1.0, WORKING_SIDE / min(width, height))
    return round(width * scale), round(height * scale)


def _load_captioner(settings: ModelSettings) -> Captioner | None:
    from transformers import AutoProcessor, BlipForConditionalGeneration

    loaded = load_preprocessor(
        settings.caption_model,
        "captioner",
        BlipForConditionalGeneration,
        AutoProcessor,
        pick_runtime(settings.device, settings.dtype),
        settings.cache_dir,
        fallback="captions will be the caption prefix alone",
    )
    return Captioner(loaded) if loaded else None


def _detect_faces(config: PreprocessConfig, images: list[Image.Image]):
    """Face boxes per image when faces decide masks or crops; Nones otherwise."""
    if not (config.use_face_detection_instead or not config.crop_based_on_salience):
        return [None] * len(images)
    detector = FaceDetector()
    found = [detector.detect(image) for image in tqdm(images, desc="Finding faces", unit="image")]
    faceless = sum(1 for boxes in found if not boxes)
    if faceless:
        logger.info("No face found in %d of %d images.", faceless, len(images))
    return found


def _make_masks(config, settings, images, face_boxes) -> list[Image.Image]:
    if config.use_face_detection_instead:
        faceless = sum(1 for boxes in face_boxes if not boxes)
        if faceless:
            logger.warning("%d images have no face: their whole image is the mask.", faceless)
        return [
            face_mask(image.size, boxes) for image, boxes in zip(images, face_boxes, strict=True)
        ]
    prompt = (config.mask_target_prompts or "").strip()
    if not prompt:
        return [whole_image_mask(image.size) for image in images]
    from transformers import AutoProcessor, CLIPSegForImageSegmentation

    loaded = load_preprocessor(
        settings.mask_model,
        "segmenter",
        CLIPSegForImageSegmentation,
        AutoProcessor,
        pick_runtime(settings.device, settings.dtype),
        settings.cache_dir,
        fallback="the whole image of every photo is its mask",
    )
    if loaded is None:
        return [whole_image_mask(image.size) for image in images]
    masker = ClipSegMasker(loaded, config.clipseg_temperature)
    masks = []
    with tqdm(total=len(images), desc="Masking (CLIPSeg)", unit="image") as progress:
        for start in range(0, len(images), CLIPSEG_BATCH):
            masks += masker.masks(images[start : start + CLIPSEG_BATCH], prompt)
            progress.update(len(masks) - progress.n)
    return masks


def _load_upscaler(settings: ModelSettings) -> Upscaler | None:
    from transformers import AutoImageProcessor, Swin2SRForImageSuperResolution

    loaded = load_preprocessor(
        settings.upscaler_model,
        "upscaler",
        Swin2SRForImageSuperResolution,
        AutoImageProcessor,
        pick_runtime(settings.device, settings.dtype),
        settings.cache_dir,
        fallback="small images are enlarged with Lanczos resampling",
    )
    return Upscaler(loaded) if loaded else None


def _write_dataset(folder: Path, names, crops, masks, captions) -> list[tuple[str, str, str]]:
    rows = []
    for index, (name, caption) in enumerate(zip(names, captions, strict=True)):
        stem = f"{index:03d}-{_slug(name)}"
        rows.append((f"{stem}.png", f"{stem}.mask.png", caption))

    def save(item) -> None:
        (image_file, mask_file, _), crop, mask = item
        crop.save(folder / image_file, format="PNG", compress_level=PNG_COMPRESSION)
        mask.save(folder / mask_file, format="PNG", compress_level=PNG_COMPRESSION)

    with ThreadPoolExecutor(IO_THREADS) as pool:
        items = list(zip(rows, crops, masks, strict=True))
        for _ in tqdm(pool.map(save, items), total=len(items), desc="Saving", unit="image"):
            pass
    write_captions(folder, [CaptionedImage(folder / i, folder / m, c) for i, m, c in rows])
    return rows


def _slug(name: str) -> str:
    """A short ASCII form of the source's stem for readable output names."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", PurePosixPath(name).stem).strip("-")
    return slug[:40] or "image"


def _nothing_usable(input_path: Path, skipped: list[tuple[str, str]]) -> str:
    name = Path(input_path).name
    if not skipped:
        return f"{name} contains no files (hidden and __MACOSX files do not count)."
    listing = "; ".join(f"{n}: {r}" for n, r in skipped[:10])
    more = f" and {len(skipped) - 10} more" if len(skipped) > 10 else ""
    return (
        f"{name} has no usable image ({len(skipped)} files skipped: {listing}{more}). "
        "Upload JPEG, PNG, WebP, BMP, GIF or TIFF photos."
    )


def _log_summary(used: int, skipped: list[tuple[str, str]], clock: StageClock) -> None:
    reasons = Counter(reason.split(" (")[0] for _, reason in skipped)
    why = ", ".join(f"{count} {reason}" for reason, count in reasons.most_common())
    logger.info(
        "Preprocessing done: %d images used, %d skipped%s. Seconds per stage: %s.",
        used,
        len(skipped),
        f" ({why})" if why else "",
        ", ".join(f"{name} {seconds:.1f}" for name, seconds in clock.seconds.items()),
    )
