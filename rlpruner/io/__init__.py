"""Files: atomic writes, saved models (safetensors + a JSON header, never pickle) and export.

    atomic.py     atomic_write(path) and its bytes/text/JSON forms: a file is complete or absent
    saved.py      save / load / load_checkpoint / read_header: the saved-model format
    exporting.py  export(model, path, "onnx" | "torchscript", example_inputs), verified before writing
    trust.py      import_allowed: which saved architectures may be built (an import path only if allowed)
    weights.py    load_weights(model, "w.safetensors" | "w.pth"): a user's state dict, never unpickled

    from rlpruner.io import save, load
    save(pruned, "small.safetensors", meta={"epoch": 3})
    model = load("small.safetensors")
"""
from .atomic import atomic_write, atomic_write_bytes, atomic_write_json, atomic_write_text
from .exporting import EXPORT_FORMATS, ONNX_EXPORTERS, ExportReport, export
from .saved import FORMAT_NAME, FORMAT_VERSION, METADATA_KEY, load, load_checkpoint, read_header, save
from .trust import import_allowed
from .weights import WeightsReport, load_weights, read_state_dict

__all__ = ["EXPORT_FORMATS", "FORMAT_NAME", "FORMAT_VERSION", "METADATA_KEY", "ONNX_EXPORTERS",
           "ExportReport", "atomic_write", "atomic_write_bytes", "atomic_write_json", "atomic_write_text",
           "export", "import_allowed", "load", "load_checkpoint", "load_weights", "read_header",
           "read_state_dict", "save", "WeightsReport"]
