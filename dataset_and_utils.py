"""The names existing users import: Replicate's recipe for SDXL fine-tunes in plain diffusers
does `from dataset_and_utils import TokenEmbeddingsHandler` (see formats/tokens.py)."""

from formats.dataset_folder import CaptionedImage, read_captions
from formats.tokens import TokenEmbeddingsHandler
from training.dataset import CachedLatentsDataset

__all__ = ["CachedLatentsDataset", "CaptionedImage", "TokenEmbeddingsHandler", "read_captions"]
