"""``edgeport export tensorrt``: ONNX artifacts built into TensorRT engines for one GPU
(build.py), with optimisation profiles derived and checked without a GPU (profiles.py), or
kept as ONNX for ONNX Runtime's TensorRT execution provider (ort.py).  A layer above the
stages: ``--fp16`` / ``--int8`` run the quantize stage first.  The runner that executes
engines is ``edgeport.runtime.tensorrt``."""

from .build import BuildPlan, TensorRTOptions, export_tensorrt, plan_build
from .profiles import Profile, derive_profile, parse_shapes

__all__ = ["BuildPlan", "Profile", "TensorRTOptions", "derive_profile", "export_tensorrt", "parse_shapes",
           "plan_build"]
