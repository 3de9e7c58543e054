"""What users see of a segmenter, as `cam_infer.detection` is for detectors: overlays with each region's outline,
folder runs and audits through the jobs driver, fused models (the task itself: `cam_infer.tasks.segmentation`)."""
