"""A bundle in a few lines, as `cam-infer info` (and `split`, `export`) print it."""

from __future__ import annotations

import textwrap

WIDTH = 100          # characters per line; a longer line (a runtime's refusal) is wrapped at words
INDENT = " " * 13    # under the value, past the field's name


def describe(bundle) -> str:
    if bundle.cut_levels is not None and bundle.task == "detection":
        return describe_detector(bundle)
    m = bundle.manifest
    prep = bundle.preprocessing
    target = m["target_layer"]
    verification = m["verification"]
    c, h, w = bundle.input_shape
    k, ah, aw = bundle.activation_shape if bundle.cut_levels is None else (None, None, None)
    labels = bundle.labels
    batch = ("dynamic (any batch size)" if bundle.dynamic_batch
             else f"fixed at {bundle.fixed_batch} in the source model: backends run chunks of {bundle.fixed_batch}, "
                  "the last one padded")
    model_in = m["input"]
    source_form = [f"{model_in['model_dtype']}" if model_in["model_dtype"] != "float32" else "",
                   model_in.get("model_layout", "NCHW") if model_in.get("model_layout", "NCHW") != "NCHW" else ""]
    quant = m["activation"].get("quantization")
    runtimes = m.get("runtimes", {})
    how = {"auto": "chosen automatically", "tensor": "ONNX tensor", "node": "ONNX node", "module": "torch module",
           "cut set": "cut set"}
    lines = [
        f"bundle       {bundle.path}",
        f"input        '{bundle.input_name}' float32 (N,{c},{h},{w}) NCHW"
        + (f"; the model takes {' '.join(f for f in source_form if f)} (converted at the boundary)"
           if any(source_form) else ""),
        f"preprocess   {'GRAY' if prep.channels == 1 else prep.color.upper()}, "
        + (f"resize shorter side to {prep.resize} ({prep.interpolation}), center crop {h}x{w}"
           if prep.crop == "center" else f"resize to {h}x{w} ({prep.interpolation})")
        + f", x*{prep.scale:.6g}, mean {list(prep.mean)}, std {list(prep.std)}",
        normalisation_line(bundle.normalisation, prep.channels),
        f"target layer '{target['requested']}' ({how[target['matched_by']]}) -> tensor '{target['tensor']}'"
        + (f", module '{target['module']}'" if target.get("module") and target["matched_by"] != "module" else ""),
        (cut_set_line(m["cut"]) if bundle.cut_levels is not None else f"activation   (N,{k},{ah},{aw})")
        + (f", dequantized from {quant['dtype']} (scale {quant['scale']}, zero point "
           f"{quant['zero_point']}); the head re-quantizes it" if quant else "")
        + tokens_note(m["activation"].get("tokens")),
        "head ops     " + ", ".join(f"{op} x{n}" for op, n in m["graphs"]["head"]["ops"].items()),
        f"output       '{m['output']['name']}': {bundle.num_classes} classes, {bundle.output_kind}"
        + (f" (the model's {' -> '.join(m['output']['left_out'])} after them is left out: probabilities are "
           "their softmax)" if m["output"].get("left_out") else "")
        + (segmentation_note(m["output"]) if bundle.task == "segmentation" else ""),
        "labels       " + (f"{len(labels)} ({', '.join(labels[:3])}{', ...' if len(labels) > 3 else ''})"
                            if labels else "none (class indices)"),
        f"batch        {batch}",
        "verified     " + ("yes" if verification.get("passed") else "NO")
        + f": head(features(x)) vs model(x), batches {verification['batch_sizes']}, "
        f"max |diff| {verification['max_abs_diff']:.3g} ({verification['runtime']})",
        runtimes_line(runtimes),
        f"source       {m['provenance'].get('source') or 'in-memory model'}"
        + (f", exported with {m['provenance']['exporter']}" if m["provenance"].get("exporter") else ""),
    ]
    return "\n".join(lines)


SOURCES = {"given": "given", "model": "read from the model", "default": "the default, guessed"}
GUESSED = ("the default for a float input, guessed ({}): the model records none; if it was trained otherwise, "
           "split it again with --mean/--std/--scale")


def normalisation_line(record: dict | None, channels: int = 3) -> str:
    """Where the mean, std and scale come from: given, read from the model (its record, or its integer input), or
    the default guessed for a float input; in parts when they differ."""
    if not record:
        return "normalised   not recorded (a bundle written before cam-infer recorded it)"
    sources = {}
    for key in ("mean", "std", "scale"):
        sources.setdefault(record.get(key, "not recorded"), []).append(key)
    if len(sources) == 1:
        only = next(iter(sources))
        default = GUESSED.format("x/255, then ImageNet's mean and std" if channels == 3 else "x/255")
        return _wrapped("normalised   " + (default if only == "default" else SOURCES.get(only, "not recorded")))
    return _wrapped("normalised   " + "; ".join(f"{' and '.join(keys)} {SOURCES.get(source, source)}"
                                                for source, keys in sources.items()))


def cut_set_line(levels: list[dict]) -> str:
    """A segmenter's cut set: each member's shape and stride, packed in one tensor at the boundary."""
    return _wrapped("cut set      " + "; ".join(f"'{lv['name']}' ({','.join(map(str, lv['shape']))}) stride "
                                                f"{lv['stride']}" for lv in levels) + " (packed in one tensor)")


def segmentation_note(output: dict) -> str:
    """A segmenter's scores: per pixel, their class axis in the model, and an ArgMax left out."""
    c, h, w = output["shape"]
    return (f" per pixel, (N,{c},{h},{w}); class axis {output['model_class_axis']} of the model's "
            f"{output['model_layout']} scores" + (" (its ArgMax after them is left out: maps explain the scores, "
                                                 "not class ids)" if output.get("ends_in_argmax") else ""))


def tokens_note(tokens: dict | None) -> str:
    """How a transformer's cut tokens are the activation's grid."""
    if not tokens:
        return ""
    shape = ",".join(map(str, tokens["shape"]))
    prefix = f"{tokens['prefix_tokens']} prefix token{'s' if tokens['prefix_tokens'] != 1 else ''} set apart + "
    blocks = len(tokens.get("attention", []))
    return (f"; the patch grid of tokens (N,{shape}) ({tokens['layout']}: "
            f"{prefix if tokens['prefix_tokens'] else ''}{tokens['grid'][0]}x{tokens['grid'][1]} patches)"
            + (f", attention over all tokens in {blocks} blocks" if blocks else ""))


def runtimes_line(runtimes: dict) -> str:
    """Which runtimes run the bundle, each refusal whole, wrapped at words."""
    return _wrapped("runtimes     " + (", ".join(f"{n}: {'yes' if r['runs'] else 'no (' + r.get('why_not', '') + ')'}"
                                                for n, r in runtimes.items()) or "not recorded"))


def _wrapped(line: str) -> str:
    """A long line broken at spaces into lines of at most WIDTH characters, continued under the value."""
    return "\n".join(textwrap.wrap(line, WIDTH, subsequent_indent=INDENT, break_long_words=False,
                                   break_on_hyphens=False))


def describe_detector(bundle) -> str:
    m = bundle.manifest
    c, h, w = bundle.input_shape
    labels = bundle.labels
    levels = "; ".join(f"'{lv['name']}' ({lv['shape'][0]},{lv['shape'][1]},{lv['shape'][2]}) stride {lv['stride']}, "
                       + (f"head sees {2 * lv['receptive_radius'] + 1}x{2 * lv['receptive_radius'] + 1} cells"
                          if lv.get("receptive_radius") is not None
                          and 2 * lv["receptive_radius"] + 1 < max(lv["shape"][1:]) else "head sees the whole map")
                       + f" of levels {lv['moves_levels']}"
                       + (f", cropped branch {lv['branch']['window']}x{lv['branch']['window']} "
                          f"('{lv['branch']['tensor']}', {lv['branch']['scores']})" if lv.get("branch") else "")
                       for lv in m["cut"])
    out = m["output"]
    return "\n".join([
        f"bundle       {bundle.path}",
        f"task         detection ({out['layout']}: boxes {out['box']} + {out['num_classes']} {out['scores']} class "
        f"scores per anchor, strides {out['strides']})",
        f"input        '{bundle.input_name}' float32 (N,{c},{h},{w}) NCHW",
        f"preprocess   letterbox to {h}x{w} ({bundle.preprocessing.interpolation}, pad {bundle.preprocessing.pad}), "
        "RGB, x/255",
        f"cut set      '{m['target_layer']['requested']}': {levels}",
        _nms_line(m["nms"]),
        "labels       " + (f"{len(labels)} ({', '.join(labels[:3])}{', ...' if len(labels) > 3 else ''})"
                            if labels else "none (class indices)"),
        f"verified     yes: head(features(x)) vs model(x), batches {m['verification']['batches']}, "
        f"max |diff| {m['verification']['max_abs_diff']:.3g}" + _scores_and_boxes(m["verification"])
        + _end_to_end_rows(m["verification"]),
        runtimes_line(m["runtimes"]),
        f"source       {m['provenance'].get('source') or 'in-memory model'}",
    ])


def _nms_line(nms: dict) -> str:
    if nms.get("end_to_end"):
        return (f"NMS          none (end-to-end export): the top {nms['max_det']} (anchor, class) scores above conf "
                f"{nms['conf']}, as its TopK picks them")
    return f"NMS          conf {nms['conf']}, IoU {nms['iou']}, at most {nms['max_det']} (class-aware)"


def _end_to_end_rows(verification: dict) -> str:
    """An end-to-end export's check: its (N,k,6) rows are the top (anchor, class) pairs of the scores before its TopK."""
    rows = verification.get("end_to_end")
    if not rows:
        return ""
    return (f"; the export's rows are the top pairs of its anchors: {rows['rows_compared']} rows, same scores and "
            f"classes, boxes within {rows['max_box_diff']:.3g} px")


def _scores_and_boxes(verification: dict) -> str:
    """How far a detector's class scores and boxes are from the model's, where the split recorded them apart (an IR)."""
    if "scores_max_abs_diff" not in verification:
        return ""
    return (f" (class scores {verification['scores_max_abs_diff']:.3g}, boxes {verification['boxes_max_abs_diff']:.3g}"
            " px)")
