"""The ONNX Runtime runner: the model exported in memory (by path, with external data, when its
weights pass 2 GiB, protobuf's limit); captured values become extra graph outputs.

ORT optimizations are off (the graph runs as written) and threads do not spin between runs, so
two runners timed in turn on a small machine do not steal each other's cores.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

import numpy as np
import onnx

from refold.errors import UnsupportedError
from refold.ir.graph import Model
from refold.runtime.base import Runner

BY_PATH_BYTES = 1800 << 20  # above this the serialized model would pass protobuf's 2 GiB limit


def with_outputs(proto: onnx.ModelProto, names: list[str], types: dict[str, onnx.TypeProto] | None = None
                 ) -> onnx.ModelProto:
    """A copy of ``proto`` whose graph also outputs ``names`` (typed where the type is known)."""
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    have = {o.name for o in m.graph.output}
    infos = {vi.name: vi for vi in m.graph.value_info}
    for n in names:
        if n in have:
            continue
        vi = infos.get(n)
        if vi is None:
            vi = onnx.ValueInfoProto(name=n)
            if types and n in types:
                vi.type.CopyFrom(types[n])
        m.graph.output.append(vi)
        have.add(n)
    return m


def session_options():
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


class OrtRunner(Runner):
    """Runs a Model (or a ModelProto) in ONNX Runtime on the CPU. Outputs are numpy arrays.

    Sessions are built per set of captured names and reused. ``peak_note`` says whether the model
    went by path (large weights stay on disk until ORT maps them).
    """

    engine = "onnxruntime"

    def __init__(self, model: Model | onnx.ModelProto, *, providers: list[str] | None = None):
        if isinstance(model, onnx.ModelProto):  # run as it is: no import into IR needed
            self._proto, self.model = model, None
            g = model.graph
            inits = {t.name for t in g.initializer}
            self.input_names = [i.name for i in g.input if i.name not in inits]
            self.output_names = [o.name for o in g.output]
            self._known = set(self.input_names) | {o for n in g.node for o in n.output if o}
            self.by_path = False
        else:
            super().__init__(model)
            self._proto = None
            self.by_path = model.weight_bytes() > BY_PATH_BYTES
        self.providers = providers or ["CPUExecutionProvider"]
        self._sessions: dict[tuple[str, ...], Any] = {}
        self._folder: str | None = None
        self._session(())  # fail now, with ORT's reason, rather than at the first batch

    @property
    def proto(self) -> onnx.ModelProto:
        if self._proto is None:
            from refold.frontends.onnx.exporter import to_onnx

            self._proto = to_onnx(self.model)
        return self._proto

    def _types(self, names) -> dict[str, onnx.TypeProto]:
        from refold.frontends.onnx.importer import type_to_proto

        if self.model is None:
            return {}
        values = {o.name: o for n in self.model.graph for o in n.outputs}
        return {n: type_to_proto(values[n].dtype, values[n].shape) for n in names
                if n in values and values[n].dtype is not None}

    def _session(self, capture: tuple[str, ...]):
        sess = self._sessions.get(capture)
        if sess is not None:
            return sess
        import onnxruntime as ort

        try:
            if self.by_path:
                sess = ort.InferenceSession(self._write(capture), session_options(), providers=self.providers)
            else:
                proto = with_outputs(self.proto, list(capture), self._types(capture)) if capture else self.proto
                sess = ort.InferenceSession(proto.SerializeToString(), session_options(),
                                            providers=self.providers)
        except Exception as e:
            raise UnsupportedError(f"ONNX Runtime cannot run the model: "
                                   f"{str(e).splitlines()[0][:300]}") from None
        self._sessions[capture] = sess
        return sess

    def _write(self, capture: tuple[str, ...]) -> str:
        """The model as a file with external data, in a private temporary folder."""
        from refold.frontends.onnx.save import save_onnx

        if self._folder is None:
            self._folder = tempfile.mkdtemp(prefix="refold-ort-")
        path = os.path.join(self._folder, f"model{len(self._sessions)}.onnx")
        outputs = list(self.model.graph.outputs)
        if capture:
            values = {o.name: o for n in self.model.graph for o in n.outputs}
            self.model.graph.outputs.extend(values[c] for c in capture if values[c] not in outputs)
        try:
            save_onnx(self.model, path, external_data=True, check=False)
        finally:
            self.model.graph.outputs[:] = outputs
        return path

    def _run(self, feeds: dict[str, Any], capture: list[str]) -> dict[str, Any]:
        sess = self._session(tuple(capture))
        names = [o.name for o in sess.get_outputs()]
        arrays = {k: _np(x) for k, x in feeds.items()}
        return dict(zip(names, sess.run(names, arrays)))

    def close(self) -> None:
        self._sessions.clear()
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)
