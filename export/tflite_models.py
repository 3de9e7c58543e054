"""Small uint8 TFLite classifiers shaped like two shipped ones, for the tests of the OpenVINO-read split
(run with TensorFlow; the files are committed under tests/data/, so tests need no TensorFlow):

    python export/tflite_models.py tests/data

- ``mnv2_avgpool_fc_uint8.tflite``: Keras MobileNetV2 (alpha 0.35, 96x96) ending as the iNaturalist bird
  classifier does: AVERAGE_POOL_2D → RESHAPE → FULLY_CONNECTED → SOFTMAX (OpenVINO keeps the pooled
  (N,1,1,C) map NHWC before the MatMul);
- ``mnv1_avgpool_conv_uint8.tflite``: Keras MobileNet v1 (alpha 0.25, 128x128) ending as the hosted
  ``mobilenet_v1_*_quant`` files do: AVERAGE_POOL_2D → CONV_2D 1x1 (the logits) → RESHAPE → SOFTMAX;
- ``mnv2_avgpool_fc_int8io.tflite``: the first one (10 classes) with int8 input and output, as TF2's
  converter writes with ``inference_input_type=tf.int8``: its input is the pixel minus 128.

Random weights (seeded), full-integer post-training quantization with a representative set of random
images, uint8 input and output as the Coral/hosted models have (int8 for the third).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def _mnv2_fc(tf, classes: int):
    size = 96
    image = tf.keras.Input((size, size, 3), batch_size=1)                  # fixed batch 1, as shipped
    base = tf.keras.applications.MobileNetV2(input_tensor=image, alpha=0.35, include_top=False, weights=None)
    x = tf.keras.layers.AveragePooling2D(size // 32)(base.output)
    x = tf.keras.layers.Reshape((-1,))(x)
    x = tf.keras.layers.Dense(classes, activation="softmax", kernel_initializer=tf.keras.initializers.RandomNormal(stddev=1.0))(x)
    return tf.keras.Model(base.input, x), size


def _mnv1_conv(tf, classes: int):
    size = 128
    image = tf.keras.Input((size, size, 3), batch_size=1)
    base = tf.keras.applications.MobileNet(input_tensor=image, alpha=0.25, include_top=False, weights=None)
    x = tf.keras.layers.AveragePooling2D(size // 32)(base.output)
    x = tf.keras.layers.Conv2D(classes, 1, kernel_initializer=tf.keras.initializers.RandomNormal(stddev=1.0))(x)     # logits spread as trained ones
    x = tf.keras.layers.Reshape((classes,))(x)
    x = tf.keras.layers.Softmax()(x)
    return tf.keras.Model(base.input, x), size


def _calibrate_batchnorm(tf, model, images: np.ndarray, rng) -> None:
    """Random but alive: each BatchNormalization gets its input's own mean and variance on `images` (as
    training would leave them), a random scale and shift; else a random MobileNet's maps vanish to 0."""
    for layer in model.layers:
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            a = tf.keras.Model(model.input, layer.input)(images).numpy()
            axes = tuple(range(a.ndim - 1))
            channels = a.shape[-1]
            layer.set_weights([rng.uniform(0.5, 1.5, channels).astype(np.float32),
                               rng.normal(0.5, 0.5, channels).astype(np.float32),
                               a.mean(axes), a.var(axes) + 1e-3])


def _quantized_tflite(tf, model, size: int, seed: int, io=None) -> bytes:
    rng = np.random.default_rng(seed)

    def representative():
        for _ in range(16):
            yield [rng.uniform(-1, 1, (1, size, size, 3)).astype(np.float32)]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = io or tf.uint8
    converter.inference_output_type = io or tf.uint8
    return converter.convert()


def main(out: str) -> None:
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    Path(out).mkdir(parents=True, exist_ok=True)
    for name, build, classes, io in (("mnv2_avgpool_fc_uint8", _mnv2_fc, 50, None),
                                     ("mnv1_avgpool_conv_uint8", _mnv1_conv, 50, None),
                                     ("mnv2_avgpool_fc_int8io", _mnv2_fc, 10, tf.int8)):
        model, size = build(tf, classes)
        rng = np.random.default_rng(0)
        _calibrate_batchnorm(tf, model, rng.uniform(-1, 1, (8, size, size, 3)).astype(np.float32), rng)
        (Path(out) / f"{name}.tflite").write_bytes(_quantized_tflite(tf, model, size, seed=1, io=io))
        print(name, (Path(out) / f"{name}.tflite").stat().st_size, "bytes")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/data")
