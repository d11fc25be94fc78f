"""The weights tarball's layout (docs/weights-tarball.md): the names its files have. The
trainer writes them (training/bundle.py, training/export.py), the model store and the
predictor read them (weights/trained_files.py, generation/lora.py)."""

LORA_FILE = "lora.safetensors"
LORA_KOHYA_FILE = "lora_kohya.safetensors"
UNET_FILE = "unet.safetensors"
EMBEDDINGS_PTI_FILE = "embeddings.pti"
EMBEDDINGS_FILE = "embeddings.safetensors"
SPECIAL_PARAMS_FILE = "special_params.json"
TRAINING_CONFIG_FILE = "training_config.json"
MODEL_CARD_FILE = "README.md"
PREVIEW_FILE = "preview.png"
LOSS_PLOT_FILE = "loss.png"
METRICS_FILE = "metrics.jsonl"
SAMPLES_DIR = "samples"
CHECKPOINTS_DIR = "checkpoints"
BUNDLE_FILE = "trained_model.tar"

# The CLIP text model's module prefix in LoRA files (transformers 4 names, which A1111,
# ComfyUI and older diffusers use): written by the exporter, read back by the predictor.
TEXT_MODEL = "text_model"
