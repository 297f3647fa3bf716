"""Real architectures for tests: tiny transformers configs (random weights) exported to ONNX, the
PP-OCR models rapidocr ships, and the onnx package's light model-zoo graphs."""
from __future__ import annotations

import glob
import importlib.util
import os

import numpy as np
import onnx

LIGHT_DIR = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
LIGHT_MODELS = sorted(glob.glob(os.path.join(LIGHT_DIR, "light_*.onnx")))


def ppocr_dir() -> str:
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    return os.path.join(spec.submodule_search_locations[0], "models")


PPOCR = {"cls": "ch_ppocr_mobile_v2.0_cls_infer.onnx", "det": "ch_PP-OCRv4_det_infer.onnx",
         "rec": "ch_PP-OCRv4_rec_infer.onnx"}
PPOCR_SHAPES = {"cls": (1, 3, 48, 192), "det": (1, 3, 320, 320), "rec": (1, 3, 48, 320)}


def ppocr_path(name: str) -> str:
    return os.path.join(ppocr_dir(), PPOCR[name])


def tiny_hf_model(name: str):
    """A transformers model from a tiny config, random weights, eval mode; plus example inputs."""
    import torch
    import transformers as tf

    torch.manual_seed(0)
    ids = torch.randint(0, 99, (1, 8))
    if name == "gpt2":
        m = tf.GPT2Model(tf.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=99, n_positions=64))
        return m.eval(), (ids,)
    if name == "bert":
        m = tf.BertModel(tf.BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2,
                                       intermediate_size=64, vocab_size=99), add_pooling_layer=False)
        return m.eval(), (ids,)
    if name == "llama":
        cfg = tf.LlamaConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4,
                             num_key_value_heads=2, intermediate_size=64, vocab_size=99)
        cfg._attn_implementation = "eager"
        return tf.LlamaModel(cfg).eval(), (ids,)
    if name == "vit":
        m = tf.ViTModel(tf.ViTConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2,
                                     intermediate_size=64, image_size=32, patch_size=8),
                        add_pooling_layer=False)
        return m.eval(), (torch.randn(1, 3, 32, 32),)
    if name == "resnet":
        m = tf.ResNetModel(tf.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1],
                                           layer_type="basic"))
        return _randomize_bn(m).eval(), (torch.randn(1, 3, 64, 64),)
    if name == "mobilenetv2":
        m = tf.MobileNetV2Model(tf.MobileNetV2Config(depth_multiplier=0.35, image_size=64))
        return _randomize_bn(m).eval(), (torch.randn(1, 3, 64, 64),)
    if name == "efficientnet":
        m = tf.EfficientNetModel(tf.EfficientNetConfig(width_coefficient=0.25, depth_coefficient=0.25,
                                                       image_size=64, hidden_dim=320))
        return _randomize_bn(m).eval(), (torch.randn(1, 3, 64, 64),)
    raise KeyError(name)


def _randomize_bn(model):
    import torch

    g = torch.Generator().manual_seed(1)
    for mod in model.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                mod.running_mean.copy_(torch.randn(mod.num_features, generator=g) * 0.1)
                mod.running_var.copy_(torch.rand(mod.num_features, generator=g) + 0.5)
    return model


def last_hidden(model):
    """The model as a module returning one tensor: its last hidden state."""
    import torch

    class LastHidden(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            out = self.m(x)
            return out[0] if isinstance(out, tuple) else out.last_hidden_state

    return LastHidden(model)  # left in training mode: export_hf_onnx's graphs depend on it


def export_hf_onnx(name: str, path: str) -> str:
    """Export a tiny transformers model to ONNX, keeping BatchNorm (legacy exporter, PRESERVE)."""
    import torch

    model, inputs = tiny_hf_model(name)
    torch.onnx.export(last_hidden(model), inputs, path, dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["output"],
                      training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False)
    return path


def random_weights(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """Give a light model-zoo graph random weights, so numeric tests mean something.

    Its weights are ``ConstantOfShape(0.02)`` nodes; each becomes a random initializer (positive
    where it feeds a BatchNormalization variance), listed as a graph input too below IR version 4.
    """
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(seed)
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    var_names = {n.input[4] for n in g.node if n.op_type == "BatchNormalization"}
    keep, new = [], []
    for n in g.node:
        if n.op_type == "ConstantOfShape" and n.input[0] in inits:
            shape = tuple(int(d) for d in inits[n.input[0]])
            a = rng.standard_normal(shape).astype(np.float32) * 0.1
            if n.output[0] in var_names:
                a = np.abs(a) + 0.5
            new.append(numpy_helper.from_array(a, n.output[0]))
        else:
            keep.append(n)
    del g.node[:]
    g.node.extend(keep)
    g.initializer.extend(new)
    if m.ir_version < 4:
        g.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in new)
    return m


WORDS = ["Hello", "refold", "2026", "graph", "rewrite", "quantize", "text", "crop", "ONNX", "model",
         "kernel", "layer", "norm", "batch", "tensor", "scale", "invoice", "total", "Street", "No.42"]


def text_crop(words: str = "Hello refold 2026", size: int = 26, x: int = 6, y: int = 8) -> np.ndarray:
    """A 48x192 RGB crop of dark text on white, as PP-OCR's orientation classifier reads."""
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", (192, 48), "white")
    ImageDraw.Draw(img).text((x, y), words, fill="black", font=ImageFont.load_default(size=size))
    return np.asarray(img)


def text_crops(n: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` varied upright crops (words, sizes, positions) for calibration and accuracy tests."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        words = " ".join(rng.choice(WORDS, size=int(rng.integers(2, 4))))
        out.append(text_crop(words, int(rng.integers(18, 30)), int(rng.integers(2, 12)), int(rng.integers(4, 14))))
    return out


def cls_input(img: np.ndarray) -> np.ndarray:
    """PP-OCR cls preprocessing: CHW, scaled to [-1, 1], a batch of one."""
    x = img.astype(np.float32).transpose(2, 0, 1) / 255.0
    return ((x - 0.5) / 0.5)[None]
