"""The server's dynamic batcher on its own (no HTTP): requests batched together each get their own answer, and one
request's error (a segmenter's class absent from its image) stays that request's."""

from __future__ import annotations

import asyncio

import numpy as np
from cam_infer.errors import CamInferError
from cam_infer.serve.batcher import Batcher

ABSENT = 8                      # the class the fake segmenter finds in no image


class OneMapPerImage:
    """A model that answers each image with its class, and refuses a batch holding the ABSENT class (as a
    segmenter's `run` does for a class not in an image); it waits on `busy` to let requests queue up."""

    def __init__(self):
        self.calls = []

    def run(self, x, key, classes):
        self.calls.append(len(x))
        if classes is not None and ABSENT in classes:
            raise CamInferError(f"class {ABSENT} is not in the image")
        return {"saliency_class": np.asarray(classes if classes is not None else [-1] * len(x), np.int64)}


async def batched_answers(requests: list, model=None, first_leaves: bool = False) -> list:
    """Each request's answer (or error) and the model's calls; `first_leaves`: the first client leaves while the batch
    gathers."""
    model = model or OneMapPerImage()
    batcher = Batcher(model, max_batch=16, window=0.2)          # the window gathers every request in one batch
    await batcher.start()
    try:
        runs = [asyncio.ensure_future(batcher.run(np.zeros((1, 3, 4, 4), np.float32), "same key", [c]))
                for c in requests]
        if first_leaves:
            await asyncio.sleep(0.05)
            runs[0].cancel()
        answers = await asyncio.wait_for(asyncio.gather(*runs, return_exceptions=True), 30)
    finally:
        await batcher.stop()
    return answers, model.calls


def test_one_requests_error_is_not_given_to_the_requests_batched_with_it():
    answers, calls = asyncio.run(batched_answers([12, ABSENT, 15]))
    assert calls[0] == 3                                           # the three ran as one batch first
    assert int(answers[0]["saliency_class"][0]) == 12
    assert isinstance(answers[1], CamInferError) and "not in the image" in str(answers[1])
    assert int(answers[2]["saliency_class"][0]) == 15


def test_requests_batched_together_each_get_their_own_rows():
    answers, calls = asyncio.run(batched_answers([1, 2, 3, 4]))
    assert calls == [4]
    assert [int(a["saliency_class"][0]) for a in answers] == [1, 2, 3, 4]


def test_a_lone_failing_request_gets_its_error_once():
    answers, calls = asyncio.run(batched_answers([ABSENT]))
    assert calls == [1] and isinstance(answers[0], CamInferError)


class FailsAtRuntime(OneMapPerImage):
    """A model whose runtime fails on any batch (not a refusal of one request): the batch's error, given to each."""

    def run(self, x, key, classes):
        self.calls.append(len(x))
        raise RuntimeError("the runtime failed")


def test_a_runtime_failure_is_the_batchs_and_is_not_rerun_request_by_request():
    got, calls = asyncio.run(batched_answers([1, 2, 3], FailsAtRuntime()))
    assert calls == [3]                                   # one model call, not 3 + 1
    assert all(isinstance(a, RuntimeError) and "the runtime failed" in str(a) for a in got)


def test_a_request_whose_client_left_is_not_rerun():
    got, calls = asyncio.run(batched_answers([12, ABSENT, 15], first_leaves=True))
    assert isinstance(got[0], asyncio.CancelledError) and int(got[2]["saliency_class"][0]) == 15
    assert calls == [3, 1, 1]                             # the batch, then the two requests still waited for
