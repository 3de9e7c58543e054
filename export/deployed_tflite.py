"""A TensorFlow post-training-quantized classifier converted by tf2onnx, as such files ship (NHWC, uint8 input
and output, Softmax → Quantize at the end), for the deployed-model tests. Needs tensorflow and tf2onnx:

    python export/deployed_tflite.py tests/data/tf2onnx_nhwc_mobilenetv2_0.35_96_quant.onnx

Keras MobileNetV2 (alpha 0.35, 96x96, 10 classes) with random weights, batch-norm statistics and class
scales taken from smooth random images, full-integer quantized by the TFLite converter (uint8 input and
output), then `python -m tf2onnx.convert --tflite` (which keeps the NHWC layout, with Transposes around
the convolutions).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

SIZE, CLASSES, LOGIT_SCALE = 96, 10, 8.0


def smooth_images(n: int, seed: int):
    """(n,SIZE,SIZE,3) float32 in [-1, 1]: 4x4 random colours upsampled, a stand-in for photos."""
    import tensorflow as tf
    coarse = np.random.default_rng(seed).uniform(0, 255, (n, 4, 4, 3)).astype(np.float32)
    return (tf.image.resize(coarse, (SIZE, SIZE), method="bilinear").numpy() / 127.5 - 1).astype(np.float32)


def keras_model():
    import tensorflow as tf
    tf.random.set_seed(0)
    model = tf.keras.applications.MobileNetV2(input_shape=(SIZE, SIZE, 3), alpha=0.35, weights=None,
                                              classes=CLASSES)
    for layer in model.layers:                   # batch-norm statistics of one batch: sane activations
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            layer.momentum = 0.0
    model(smooth_images(32, 1), training=True)
    pooled = tf.keras.Model(model.input, model.layers[-2].output)(smooth_images(64, 2)).numpy()
    classifier = model.layers[-1]
    w, _ = classifier.get_weights()
    w = w / (pooled @ w).std(axis=0).clip(1e-3) * LOGIT_SCALE   # confident, as trained models are
    classifier.set_weights([w, -(pooled @ w).mean(axis=0)])
    return model


def quantized_tflite(model) -> bytes:
    import tensorflow as tf
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([image[None]] for image in smooth_images(32, 3))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    converter.inference_output_type = tf.uint8
    return converter.convert()


def main() -> int:
    out = Path(sys.argv[1])
    with tempfile.TemporaryDirectory() as folder:
        tflite = Path(folder) / "model.tflite"
        tflite.write_bytes(quantized_tflite(keras_model()))
        subprocess.run([sys.executable, "-m", "tf2onnx.convert", "--tflite", str(tflite), "--output", str(out),
                        "--opset", "13"], check=True, capture_output=True)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
