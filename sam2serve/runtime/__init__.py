"""Model runtimes behind one seam (`base.Runtime`): the torch runtime (Meta's model code,
fp32, exact) and the fast CPU runtime (OpenVINO) beside it; `factory` picks one from
`Settings.runtime`. Only this package touches SAM2's internals (the `sam2` modules)."""
