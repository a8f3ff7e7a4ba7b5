"""Writes the small fixtures in this folder with the real libraries
(numpy, safetensors, gguf, onnx) and `expected.json`, the reference facts
`tests/real_fixtures.rs` checks the sniffer against.

    pip install numpy safetensors gguf onnx
    python make_fixtures.py
"""
import json
import pickle
import struct

import gguf
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import save_file

expected = {}

# safetensors
save_file(
    {"w": np.ones((4, 4), np.float16), "b": np.zeros(3, np.float32), "e": np.zeros((0, 3), np.int8)},
    "m.safetensors",
    metadata={"format": "np"},
)
raw = open("m.safetensors", "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
hdr = json.loads(raw[8 : 8 + n])
expected["m.safetensors"] = {
    "format": "safetensors",
    "tensors": {
        k: [8 + n + v["data_offsets"][0], v["data_offsets"][1] - v["data_offsets"][0], v["dtype"], v["shape"]]
        for k, v in hdr.items()
        if k != "__metadata__"
    },
}

# GGUF
w = gguf.GGUFWriter("m.gguf", "llama")
w.add_block_count(2)
w.add_name("tiny")
w.add_token_list(["a", "b", "c"])
w.add_float32("x.f", 1.5)
w.add_tensor("tok.weight", np.ones((3, 64), np.float32))
w.add_tensor("q.weight", np.zeros(64, np.float16))
w.add_tensor("q8.weight", np.zeros((1, 68), dtype=np.uint8), raw_dtype=gguf.GGMLQuantizationType.Q8_0)
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
r = gguf.GGUFReader("m.gguf")
expected["m.gguf"] = {
    "format": "gguf",
    "tensors": {t.name: [int(t.data_offset), int(t.n_bytes), t.tensor_type.name, [int(d) for d in t.shape]] for t in r.tensors},
}

# ONNX
W = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3), "W")
B = numpy_helper.from_array(np.zeros(4, np.float32), "B")
node = helper.make_node("Gemm", ["x", "W", "B"], ["y"])
g = helper.make_graph(
    [node],
    "g",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    [W, B],
)
onnx.save(helper.make_model(g, producer_name="tessera-test", opset_imports=[helper.make_opsetid("", 17)]), "m.onnx")
raw = open("m.onnx", "rb").read()
m = onnx.load("m.onnx")
expected["m.onnx"] = {
    "format": "onnx",
    "tensors": {t.name: [raw.find(t.raw_data), len(t.raw_data), "FLOAT", list(t.dims)] for t in m.graph.initializer},
}

# numpy
a = np.arange(12, dtype=np.float32).reshape(3, 4)
np.save("a.npy", a)
raw = open("a.npy", "rb").read()
expected["a.npy"] = {"format": "npy", "tensors": {"array": [len(raw) - a.nbytes, a.nbytes, "<f4", [3, 4]]}}
np.save("obj.npy", np.array([{"a": 1}, [1, 2]], dtype=object), allow_pickle=True)
expected["obj.npy"] = {"format": "npy", "verdict": "safe_pickle"}
np.savez("s.npz", x=np.ones((2, 3)), y=np.arange(5))
expected["s.npz"] = {"format": "npz", "verdict": "no_pickle"}
np.savez_compressed("c.npz", x=np.ones((20, 30)), o=np.array([None, "x"], dtype=object))
expected["c.npz"] = {"format": "npz", "verdict": "safe_pickle"}

# pickles
pickle.dump({"a": [1, 2.5]}, open("p2.pkl", "wb"), protocol=2)
pickle.dump({"a": [1, 2.5]}, open("p5.pkl", "wb"), protocol=5)
expected["p2.pkl"] = {"format": "pickle", "verdict": "safe_pickle"}
expected["p5.pkl"] = {"format": "pickle", "verdict": "safe_pickle"}

json.dump(expected, open("expected.json", "w"), indent=1, sort_keys=True)
