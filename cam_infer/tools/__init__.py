"""Tools beside the data path: the benchmark of methods and fused models (`bench`, ``cam-infer bench``), the
demo on the embedded ShapesNet (`demo`, ``cam-infer demo``) and synthetic scenes with ground truth
(`synthetic`, ``cam-infer synthetic``). The CLI and the tests use them; nothing on the data path imports them.
"""
