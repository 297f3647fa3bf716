"""The ONNX Runtime runner: the model exported in memory (by path, with external data, when its
weights pass ``BY_PATH_BYTES``, below protobuf's 2 GiB limit); captured values become extra graph
outputs. By path, the weights are written once (byte ranges copied, never read into Python) and
every session opens that file, or its structure with extra outputs, reading the same data file.

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
from refold.frontends.onnx.file import for_onnxruntime
from refold.ir.graph import Model
from refold.runtime.base import Runner

BY_PATH_BYTES = 1800 << 20  # above this the serialized model would pass protobuf's 2 GiB limit
# ORT session option: where a model given as bytes finds its external data files
EXTERNAL_FOLDER_KEY = "session.model_external_initializers_file_folder_path"


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
    so.log_severity_level = 4  # errors come back as exceptions; ORT printing them too would add stderr lines
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


class OrtRunner(Runner):
    """Runs a Model, a ModelProto or an ONNX file (a path: by path, its external data beside it)
    in ONNX Runtime on the CPU. Outputs are numpy arrays.

    Sessions are built per set of captured names and reused. ``by_path`` says whether the model
    goes by path: a path, or a Model whose weights pass ``BY_PATH_BYTES``, which is written once,
    with external data, to a private temporary folder that ``close()`` removes.
    """

    engine = "onnxruntime"

    def __init__(self, model: Model | onnx.ModelProto | str | os.PathLike, *,
                 providers: list[str] | None = None):
        self._path: str | None = None
        self._folder: str | None = None
        if isinstance(model, (str, os.PathLike)):  # a file: ORT reads it and its data by path
            self._path = os.path.abspath(os.fspath(model))
            self._proto_names(onnx.load(self._path, load_external_data=False))
            self.by_path = True
        elif isinstance(model, onnx.ModelProto):  # run as it is: no import into IR needed
            self._proto_names(model)
            self.by_path = False
        else:
            super().__init__(model)
            self._proto = None
            self.by_path = model.weight_bytes() > BY_PATH_BYTES
        self.providers = providers or ["CPUExecutionProvider"]
        self._sessions: dict[tuple[str, ...], Any] = {}
        self._session(())  # fail now, with ORT's reason, rather than at the first batch

    def _proto_names(self, proto: onnx.ModelProto) -> None:
        self._proto, self.model = proto, None
        g = proto.graph
        inits = {t.name for t in g.initializer}
        self.input_names = [i.name for i in g.input if i.name not in inits]
        self.output_names = [o.name for o in g.output]
        self._known = set(self.input_names) | {o for n in g.node for o in n.output if o}

    @property
    def proto(self) -> onnx.ModelProto:
        """The model as ORT gets it; by path, its structure (tensors as external references)."""
        if self._proto is None:
            if self.by_path:
                self._write()
            else:
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
            if self.by_path and not capture:
                sess = ort.InferenceSession(self._write(), session_options(), providers=self.providers)
            elif self.by_path:  # the structure with extra outputs, as bytes; the data stays in its file
                proto = with_outputs(self.proto, list(capture), self._types(capture))
                so = session_options()
                so.add_session_config_entry(EXTERNAL_FOLDER_KEY, os.path.dirname(self._write()))
                sess = ort.InferenceSession(proto.SerializeToString(), so, providers=self.providers)
            else:
                proto = with_outputs(self.proto, list(capture), self._types(capture)) if capture else self.proto
                sess = ort.InferenceSession(for_onnxruntime(proto).SerializeToString(), session_options(),
                                            providers=self.providers)
        except Exception as e:
            raise UnsupportedError(f"ONNX Runtime cannot run the model: "
                                   f"{str(e).splitlines()[0][:300]}") from None
        self._sessions[capture] = sess
        return sess

    def _write(self) -> str:
        """The model's file: the path given, or the Model written once with external data (byte
        ranges copied, no fsync: it is scratch) to a private temporary folder."""
        if self._path is None:
            from refold.frontends.onnx.save import save_onnx

            folder = tempfile.mkdtemp(prefix="refold-ort-")
            path = os.path.join(folder, "model.onnx")
            try:
                save_onnx(self.model, path, external_data=True, check=False, durable=False)
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
            self._folder, self._path = folder, path
            self._proto = onnx.load(path, load_external_data=False)
        return self._path

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
            self._path = self._proto = None  # written again if the runner is used after close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)
