import os
import sys
import warnings

import pytest

sys.path.insert(0, os.path.dirname(__file__))
warnings.filterwarnings("ignore")


@pytest.fixture(scope="session")
def hf_onnx(tmp_path_factory):
    """Path of a tiny transformers model exported to ONNX (cached per session)."""
    import zoo

    folder = tmp_path_factory.mktemp("hf_onnx")
    cache = {}

    def get(name: str) -> str:
        if name not in cache:
            cache[name] = zoo.export_hf_onnx(name, str(folder / f"{name}.onnx"))
        return cache[name]

    return get
