"""Model runtimes behind one seam (`base.Runtime`): the torch runtime (Meta's model code,
fp32, exact) and the fast CPU runtime (OpenVINO) beside it; `factory` picks one from
`Settings.runtime`; `pool` loads models lazily within a budget; `weights` resolves, downloads
and checks checkpoints; `video_tracker` drives Meta's video model; `amg` holds the automatic
mask generator's SAM2 helpers; `sam3_runtime` (+ `sam3_types`, `sam3_build`, `sam3_device`)
is SAM 3 (concept prompts, its instance predictor), exact, and `sam3_fast` its OpenVINO
trunk. Only this package touches SAM2's and SAM 3's internals (the `sam2` / `sam3` modules).

Layer: below the store, beside media and scheduling. May import: ground floor only."""
