"""openvino-xai 1.1.0's ViTReciproCAM on an ONNX file, raw (unscaled) per-class maps, float32: run in a Python that has
openvino-xai (it pins an older OpenVINO and NumPy), never imported by the tests' own Python.

    python tests/xai_vit_recipro.py MODEL.onnx INPUTS.npy OUT.npz [--onehot] [--no-cls-token]

INPUTS (N,3,H,W) float32, each image explained on its own (openvino-xai runs batch 1); OUT holds the ``maps``
(N,C,h,w) and the ``inputs``.
"""

import argparse

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model"), parser.add_argument("inputs"), parser.add_argument("out")
    parser.add_argument("--onehot", action="store_true"), parser.add_argument("--no-cls-token", action="store_true")
    args = parser.parse_args()
    import openvino as ov
    from openvino_xai.methods.white_box.recipro_cam import ViTReciproCAM

    compile_model = ov.Core.compile_model               # openvino-xai compiles with no config: ask for float32
    ov.Core.compile_model = lambda self, model, device_name="CPU", config=None: compile_model(
        self, model, device_name, {**(config or {}), "INFERENCE_PRECISION_HINT": "f32"})
    method = ViTReciproCAM(ov.Core().read_model(args.model), embed_scaling=False, use_gaussian=not args.onehot,
                           cls_token=not args.no_cls_token)
    x = np.load(args.inputs)
    maps = np.concatenate([method.generate_saliency_map(x[i:i + 1]) for i in range(len(x))])
    np.savez_compressed(args.out, maps=maps.astype(np.float32), inputs=x)


if __name__ == "__main__":
    main()
