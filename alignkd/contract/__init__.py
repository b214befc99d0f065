"""alignkd.contract: the bundle contract, below both `alignkd.export` (which writes bundles) and `alignkd.runtime`
(which reads them): the manifest schema and its checks (`manifest.py`) and the text decoder's mask convention
(`decoder.py`). It imports neither side. The other readers hold bundles to the same files and vectors: the native
runner (`runtime/`), the Android core (`android_demo/core`) and the iOS core (`ios_demo/AlignKDCore`), all tested
on `export/golden/`.
"""
