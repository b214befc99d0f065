"""alignkd.export: MobileVLM -> ExecuTorch / ONNX / Core ML bundles with parity measured at export.

`export_bundle` (in api.py) is the entry; importing this package stays light (no torch) so `alignkd --help`
remains fast.

    alignkd export CHECKPOINT --target executorch --quant 8da4w -o BUNDLE
"""

from alignkd.export.api import export_bundle  # noqa: F401
