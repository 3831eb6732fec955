"""Export a bitflow engine graph (a ``.bfn`` model) for other tools: plain ONNX and QONNX.

    from bitflow.export import export_onnx
    export_onnx("fm.bfn", "fm.onnx", format="onnx")     # onnxruntime, Netron
    export_onnx("fm.bfn", "fm.qonnx.onnx", format="qonnx")  # Brevitas / FINN tooling

or ``bitflow export fm.bfn -o fm.onnx --format onnx|qonnx``. Needs the ``onnx`` package
(``pip install bitflow[onnx]``); like the engine, it never imports torch.

See :mod:`bitflow.export.onnx` for how each op is written and the one convention that differs
(NaN handling).
"""

from __future__ import annotations

from .onnx import FORMATS, RULES, ExportError, export_onnx, to_onnx

__all__ = ["FORMATS", "RULES", "ExportError", "export_onnx", "to_onnx"]
