"""Models: importing, describing and documenting model versions.

Import from here; the modules behind these names are internals. Heavy libraries (torch,
transformers) are imported only when a function needs them.
"""

from llmos.models.card import model_card
from llmos.models.info import TASKS, FileInfo, GGUFSource, ModelImportError, ModelInfo
from llmos.models.loaders import ModelLoader, import_gguf, import_hf_dir, inspect_model

__all__ = ["TASKS", "FileInfo", "GGUFSource", "ModelImportError", "ModelInfo", "ModelLoader",
           "import_gguf", "import_hf_dir", "inspect_model", "model_card"]
