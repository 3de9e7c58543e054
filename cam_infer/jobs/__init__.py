"""Folder runs: `cam-infer explain` and `cam-infer audit` over files and folders, for every task.

    folders.py     collect: the images of the given files and folders, their output names, their stamps
    journal.py     resume: the one resume format (an append-only journal of finished work)
    driver.py      collect → lock → resume → runner → write: `Job`, `run_job`
    explain.py     the explain job: overlays and results.json, for every task
    explainers.py  the explainer a bundle's task calls for (`open_explainer`)

A task brings its work (a batch of images → rows and pictures) and how its rows become files: the
classifier's in `cam_infer.runs` and `cam_infer.audit`, the detector's in `cam_infer.detection.runs` and
`cam_infer.detection.audit`. Where the work runs (this process, worker processes, Ray) is `cam_infer.parallel`.
"""
